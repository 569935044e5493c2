"""What both sides share about the model: the backbone, the side network, the deployable side outputs and their files."""
