"""Federated averaging with Flower (`flwr`, the `federated` extra): the reference a pool of devices
is compared with. Devices train the side network locally; Flower's FedAvg, its central-DP wrapper
or SecAgg+ aggregates (`run_fedavg`)."""
