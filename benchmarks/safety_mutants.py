"""Mutant check of the safety properties: does the test suite catch a small, realistic safety bug?

Each mutant is one exact code snippet of one module (named by its dotted module name, so a mutant
follows its code when a module moves: re-point `module`) and its replacement, plus the tests that
must catch it. The script copies the repository's tracked files (`git ls-files`) to a temporary
directory, checks that the listed tests pass there unmutated (the clean check), then applies one
mutant at a time and runs its tests (`pytest -x`, the copy first on PYTHONPATH): a failing test
kills the mutant. It prints JSON: per mutant killed / survived / error, the killing test and the
seconds. A snippet that is not found exactly once is an error for that mutant, never a kill.
Not part of the default test run (it runs the tests itself); 44 mutants took 6 min 49 s on 2 shared cores
(the clean check 36 s of it; revocation_leaves_training_running alone 69 s).

    python benchmarks/safety_mutants.py                      # every mutant
    python benchmarks/safety_mutants.py --list               # names, modules, tests
    python benchmarks/safety_mutants.py --only rr_keep_probability_k_minus_1 --skip-clean-check

Add one mutant per new safety property.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
KILLED, SURVIVED, ERROR, TIMEOUT = "killed", "survived", "error", "timeout"


@dataclass(frozen=True)
class Mutant:
    """One safety bug: `find` (exactly once in `module`) becomes `replace`; `tests` must catch it."""

    name: str
    module: str  # dotted name, e.g. "secure_assist.mechanisms.accounting"
    find: str
    replace: str
    tests: tuple[str, ...]  # pytest node ids or files, relative to the repository root
    what: str

    def path(self, root: Path) -> Path:
        """The module's source file under `root` (a package's is its __init__.py)."""
        base = root / Path(*self.module.split("."))
        return base / "__init__.py" if base.is_dir() else base.with_suffix(".py")


DP = "tests/test_mechanisms_dp.py"
SECURITY = "tests/test_transport_security.py"
QUOTAS = "tests/test_server_quotas.py"
TRANSPORT_QUOTAS = "tests/test_transport_quotas.py"
CKKS_QUOTAS = "tests/test_ckks_quotas.py"
POOLED = "tests/test_pooled.py"
ROUNDS = "tests/test_rounds.py"
ROUNDS_TRANSPORT = "tests/test_rounds_transport.py"
ROUNDS_REFRESH = "tests/test_rounds_refresh.py"
REPLIES = "tests/test_training_replies.py"

MUTANTS: tuple[Mutant, ...] = (
    # Randomized response.
    Mutant("rr_keep_probability_k_minus_1", "secure_assist.mechanisms.accounting",
           "return math.exp(epsilon) / (math.exp(epsilon) + n_classes - 1)",
           "return math.exp(epsilon) / (math.exp(epsilon) + 1)",
           (f"{DP}::test_label_rr_keeps_the_label_at_the_k_ary_rate_and_its_epsilon_round_trips",),
           "RR keep probability without the K - 1 term (right only for 2 classes)"),
    Mutant("rr_epsilon_k_minus_1", "secure_assist.mechanisms.accounting",
           "flip_each = (1 - keep_probability) / (n_classes - 1)", "flip_each = 1 - keep_probability",
           (f"{DP}::test_label_rr_keeps_the_label_at_the_k_ary_rate_and_its_epsilon_round_trips",),
           "RR ε from q without the K - 1 term"),
    Mutant("rr_flip_may_keep", "secure_assist.mechanisms.delta",
           "shift = self.rng.integers(1, n_classes, size=len(labels))",
           "shift = self.rng.integers(0, n_classes, size=len(labels))",
           (f"{DP}::test_label_rr_keeps_the_label_at_the_k_ary_rate_and_its_epsilon_round_trips",
            f"{DP}::test_label_rr_flip_rate_epsilon_and_unbiasedness"),
           "a 'flipped' label may stay the true one: RR keeps more than q"),
    # DP noise scales and accounting.
    Mutant("gaussian_noise_halved", "secure_assist.mechanisms.delta",
           "return clipped + self.rng.normal(0.0, self.noise_multiplier * self.clip_norm, size=clipped.shape)",
           "return clipped + self.rng.normal(0.0, 0.5 * self.noise_multiplier * self.clip_norm, size=clipped.shape)",
           ("tests/test_audit_dp_check.py", f"{DP}::test_gaussian_noise_scale_statistically"),
           "Gaussian Δ noise at half its calibrated σ"),
    Mutant("gaussian_zero_out_sensitivity", "secure_assist.mechanisms.delta",
           "sensitivity = 2.0  # in units of the clip norm c (replace-one)", "sensitivity = 1.0",
           (f"{DP}::test_gaussian_reports_epsilon_for_target",),
           "σ calibrated to sensitivity c instead of replace-one's 2c"),
    Mutant("analytic_gaussian_delta_wrong", "secure_assist.mechanisms.accounting",
           "return float(norm.cdf(a - b) - math.exp(epsilon + norm.logcdf(-a - b)))",
           "return float(norm.cdf(a - b) - math.exp(epsilon + norm.logcdf(-a + b)))",
           (f"{DP}::test_analytic_gaussian_matches_design_and_numeric_profile",),
           "analytic Gaussian δ(ε) with a sign slip"),
    Mutant("activation_noise_without_clip_scale", "secure_assist.mechanisms.activations",
           "return self.parameters.activation_noise_multiplier * self.parameters.activation_clip",
           "return self.parameters.activation_noise_multiplier",
           (f"{DP}::test_activation_noise_scale_statistically",),
           "activation noise σ not scaled by the clip norm"),
    # The ε lower bound.
    Mutant("epsilon_lower_bound_shrunk", "secure_assist.metrics",
           "np.log((tpr_low - delta) / fpr_high)", "0.6 * np.log((tpr_low - delta) / fpr_high)",
           ("tests/test_attacks_privacy_bounds.py",), "the ε lower bound 0.6x too small"),
    Mutant("epsilon_lower_bound_ignores_delta", "secure_assist.metrics",
           "np.log((tpr_low - delta) / fpr_high)", "np.log(tpr_low / fpr_high)",
           ("tests/test_attacks_privacy_bounds.py",), "the ε lower bound forgets δ"),
    # Safeguard.
    Mutant("safeguard_ignores_significance", "secure_assist.training.safeguard",
           "best = _best(brier) if p_value <= SIGNIFICANCE and more_right else 0", "best = _best(brier)",
           ("tests/test_safeguard.py", f"{DP}::test_safeguard_drops_a_gain_that_is_noise"),
           "the safeguard deploys a side output whatever its test says"),
    # Server limits.
    Mutant("limits_zero_sample_upload", "protocol.server.limits",
           "if shape is not None and shape.samples == 0:", "if False:",
           ("tests/test_transport_abuse.py::test_the_ckks_head_server_takes_the_same_limits",),
           "a zero-sample upload (sized only by its declared shape) is admitted"),
    Mutant("limits_width_off_by_one", "protocol.server.limits",
           "if value is not None and value > getattr(self, name):",
           "if value is not None and value > getattr(self, name) + 1:",
           ("tests/test_transport_abuse.py::test_the_ckks_head_server_takes_the_same_limits",),
           "shape limits admit one more than the limit"),
    Mutant("limits_samples_held_unchecked", "protocol.server.endpoint",
           "self.limits.check_samples_held(self.samples_after(message))", "pass",
           ("tests/test_transport_abuse.py::test_samples_held_are_bounded_across_uploads",),
           "the per-device sample limit checks each upload, not the total held"),
    Mutant("training_epochs_unbounded", "protocol.server.side_tuning",
           "            self.limits.check_epochs(message.epochs_total)", "            pass",
           ("tests/test_transport_abuse.py::test_training_epochs_are_bounded_in_process",),
           "a device's training request is not checked against max_epochs"),
    # TLS and transport.
    Mutant("client_skips_pin_check", "protocol.transport.client",
           "if seen != pinned:", "if False:",
           (f"{SECURITY}::test_the_device_pin_check_alone_refuses_another_server",),
           "the device does not compare the server certificate with its pin"),
    Mutant("server_client_cert_optional", "protocol.transport.identity",
           'context.verify_mode = ssl.CERT_REQUIRED\n        context.load_verify_locations(cadata="".join(pems))',
           'context.verify_mode = ssl.CERT_OPTIONAL\n        context.load_verify_locations(cadata="".join(pems))',
           (f"{SECURITY}::test_a_client_without_a_certificate_fails_the_handshake",),
           "the server accepts TLS clients with no certificate"),
    Mutant("certificateless_client_reaches_authentication", "protocol.transport.server",
           "        if der is None:\n", "        if der is None and False:\n",
           (f"{SECURITY}::test_a_server_context_without_required_certificates_still_refuses_clearly",),
           "a client without a certificate (were CERT_REQUIRED lost) reaches authentication unrefused"),
    Mutant("device_context_unverified", "protocol.transport.identity",
           "context.verify_mode = ssl.CERT_REQUIRED\n        context.load_verify_locations(cadata=pinned.read_text())",
           "context.verify_mode = ssl.CERT_NONE\n        context.load_verify_locations(cadata=pinned.read_text())",
           (f"{SECURITY}::test_wrong_server_identity_is_refused_by_the_device",),
           "the device's TLS context does not verify the server"),
    Mutant("revoked_device_served", "protocol.transport.allow_list",
           'return "unknown" if entry is None else ("revoked" if entry.get("revoked", False) else None)',
           'return "unknown" if entry is None else None',
           (f"{SECURITY}::test_revoked_client_certificate_is_rejected",), "a revoked device is served"),
    Mutant("replayed_frame_accepted", "protocol.transport.framing",
           "if sequence != expected_sequence:", "if sequence > expected_sequence:",
           (f"{SECURITY}::test_replayed_frame_is_rejected",), "a replayed frame is accepted"),
    # Fail-closed attacks.
    Mutant("missing_declared_field_not_applicable", "secure_assist.audit.auditor",
           "    except MissingViewField as exc:\n        raise ViewContractError(",
           "    except MissingViewField as exc:\n        raise exc\n        raise ViewContractError(",
           ("tests/test_audit_fail_closed.py::test_a_field_the_mode_declares_but_the_reader_misses_fails_the_audit",),
           "a field the view's mode declares but the reader misses reads as 'not applicable'"),
    Mutant("undeclared_field_attack_runs", "secure_assist.audit.auditor",
           "if not attack.applicable(declared):", "if False:",
           ("tests/test_audit_fail_closed.py::"
            "test_a_field_the_mode_does_not_declare_is_not_applicable_without_running",),
           "attacks run on views whose mode lacks their fields"),
    # CKKS public context.
    Mutant("ckks_context_size_unchecked", "protocol.modes.ckks_ridge.context",
           "if len(data) > MAX_PUBLIC_CONTEXT_BYTES:", "if False:",
           ("tests/test_mechanisms_he.py::test_public_context_holds_no_key_and_more_is_refused",),
           "the server parses contexts large enough to carry key material"),
    # Activation cache and server view.
    Mutant("cache_holds_by_id_only", "protocol.server.cache",
           "return all(stored.get(key) == values(i) for i, key in enumerate(keys))",
           "return all(key in stored for key in keys)",
           ("tests/test_core_cache.py::test_holds_only_exactly_the_cached_values",),
           "a re-send with other values (poisoning) is recorded as a re-send, its values hidden"),
    Mutant("later_uploads_recorded_as_resends", "protocol.server.side_tuning",
           "if isinstance(message, self.UPLOAD) and message.layers == self.trainer.layers and self._holds(message):",
           "if isinstance(message, self.UPLOAD) and message.layers == self.trainer.layers:",
           ("tests/test_core_server.py::test_every_uploaded_sample_is_in_the_view_the_attacks_read",),
           "uploads after the first are recorded as re-sends: no Δ, no activations in the view"),
    Mutant("resent_upload_request_accepted", "protocol.server.endpoint",
           "if isinstance(message, (ResentUpload, RecordedDigest)):  # forged", "if False:  # forged",
           ("tests/test_core_server.py::test_protocol_violations_are_answered_with_errors",),
           "a forged ResentUpload request writes a false record into the view"),
    # device_local and the run path.
    Mutant("run_training_device_local_guard", "secure_assist.training.run",
           "    elif not mode.uploads:\n        raise UserInputError(", "    elif False:\n        raise UserInputError(",
           ("tests/test_transport_modes.py::test_run_training_refuses_device_local_over_a_channel_before_sending",),
           "run_training sends a device_local run over a given channel"),
    Mutant("device_command_device_local_guard", "secure_assist.commands.device",
           "raise UserInputError(f\"training mode {mode.name!r} uploads nothing",
           "print(f\"training mode {mode.name!r} uploads nothing",
           ("tests/test_transport_modes.py::test_device_local_is_refused_by_the_device_command",),
           "`secure-assist device` starts a device_local run against a server"),
    Mutant("forwards_after_epoch_one", "secure_assist.training.run",
           "        with PeakMemory() as train_peak:\n            outcome = mode.train(",
           "        with PeakMemory() as train_peak:\n"
           "            for _ in range(config.epochs - 1):  # the device forwards every epoch again\n"
           "                for _batch in device.batches(upload_set, \"re-forward\"):\n"
           "                    pass\n"
           "            outcome = mode.train(",
           ("tests/test_modes_contract.py::test_pair_runs_in_process_and_its_model_file_reproduces_it"
            "[side_network-none]",),
           "epochs >= 2 ask the device for forward passes again"),
    # Per-device byte quotas and the server-wide memory pool.
    Mutant("disk_quota_ignores_stored_bytes", "protocol.server.quotas",
           "after = directory_bytes(self.workdir) + growth", "after = growth",
           (f"{QUOTAS}::test_the_disk_a_device_uses_is_bounded_by_its_quota",),
           "the disk quota checks each request's growth, not the device's directory after it"),
    Mutant("memory_pool_ignores_other_devices", "protocol.server.memory_pool",
           "if others + nbytes > self.capacity:", "if nbytes > self.capacity:",
           (f"{QUOTAS}::test_the_memory_held_for_a_device_is_bounded_per_device_and_server_wide",),
           "the server-wide memory budget is checked per device, not for all devices together"),
    Mutant("oversized_weights_reply_built", "protocol.server.side_tuning",
           "        if self.network is None:\n            self._check_reply_fits(shape)",
           "        if self.network is None:\n            pass",
           (f"{QUOTAS}::test_a_network_whose_weights_reply_exceeds_the_frame_limit_is_refused_before_it_is_built",),
           "a first upload whose weights reply exceeds the frame limit builds its network"),
    Mutant("role_refusal_recorded_in_full", "protocol.server.endpoint",
           "if not isinstance(exc, ServerStopping):", "if isinstance(exc, ServerStopping):",
           (f"{QUOTAS}::test_requests_refused_inside_the_role_or_undecodable_are_recorded_by_digest",),
           "a request the role refuses stays in the transcript in full, not as its digest"),
    Mutant("zero_spread_feature_scaled", "protocol.model.side_network",
           "self.input_scale.copy_(torch.where(spread > _MIN_SPREAD, spread, torch.ones_like(spread)))",
           "self.input_scale.copy_(spread)",
           (f"{QUOTAS}::test_a_one_sample_first_upload_or_a_constant_feature_does_not_poison_the_network",),
           "a feature without spread is divided by it: a one-sample first upload poisons the network (NaN)"),
    # Transport quotas.
    Mutant("hello_on_first_connection_only", "protocol.transport.server",
           "if not connection.greeted and slot.endpoint.requires_hello",
           "if slot.endpoint.mode is None and slot.endpoint.requires_hello",
           (f"{TRANSPORT_QUOTAS}::test_every_connection_must_open_with_hello",),
           "only a device's first connection must open with a Hello"),
    Mutant("revocation_leaves_training_running", "protocol.transport.server",
           "if not slot.stop.revoked and self._trusted(identity) is not None:",
           "if slot.stop.revoked and self._trusted(identity) is not None:",
           (f"{TRANSPORT_QUOTAS}::test_revocation_stops_training_in_flight",),
           "a device revoked during training is trained to the end"),
    Mutant("unread_reply_budget_counts_headers", "protocol.transport.replies",
           "frame = PartialFrame(HEADER_BYTES + len(payload))", "frame = PartialFrame(HEADER_BYTES)",
           (f"{TRANSPORT_QUOTAS}::test_unread_replies_are_bounded_and_slow_readers_dropped",),
           "the unread-reply budget counts each reply's header, not its bytes"),
    Mutant("handshake_turns_off_by_one", "protocol.transport.handshakes",
           "if len(self._running) < self.capacity:", "if len(self._running) <= self.capacity:",
           (f"{TRANSPORT_QUOTAS}::test_stalled_handshakes_hold_at_most_their_turns",),
           "one more TLS handshake than its turns holds TLS state"),
    Mutant("peer_log_keyed_by_port", "protocol.transport.peer_log",
           'return peer.rsplit(":", 1)[0]', "return peer",
           (f"{TRANSPORT_QUOTAS}::test_peer_triggered_log_lines_are_rate_limited",),
           "log lines are rate-limited per address and port: every new connection writes its own"),
    # CKKS head quotas.
    Mutant("ckks_bytes_per_sample_upload_only", "protocol.modes.ckks_ridge.server",
           "held = store.ciphertext_bytes + len(upload.ciphertexts)", "held = len(upload.ciphertexts)",
           (f"{CKKS_QUOTAS}::test_ciphertext_bytes_per_sample_are_bounded",),
           "ciphertext bytes per sample checked per upload, not for all the device's uploads"),
    Mutant("ckks_fit_products_without_classes", "protocol.modes.ckks_ridge.server",
           "products = len(self.store) * layout.groups * self.store.classes",
           "products = len(self.store) * layout.groups",
           (f"{CKKS_QUOTAS}::test_fit_work_is_bounded_before_it_starts_and_repeats_are_cached",),
           "a fit's products counted for one class: fits up to classes x the bound run"),
    # The audit's DP check.
    Mutant("dp_check_consistency_flipped", "secure_assist.audit.dp_check",
           '"consistent": bounds["empirical_epsilon_lower_bound"] <= claim.epsilon',
           '"consistent": claim.epsilon <= bounds["empirical_epsilon_lower_bound"]',
           ("tests/test_audit_dp_check.py::test_randomized_response_is_certified_near_its_claim",),
           "the DP check calls a claim consistent only when the bound reaches it"),
    Mutant("dp_threshold_evaluated_on_its_fit_half", "secure_assist.audit.dp_bounds",
           "test_0, test_1 = np.sort(scores_0[half_0:]), np.sort(scores_1[half_1:])",
           "test_0, test_1 = fit_0, fit_1",
           ("tests/test_attacks_privacy_bounds.py::"
            "test_held_out_bounds_estimate_mu_and_choose_the_threshold_on_the_first_half",),
           "the threshold is evaluated on the half it was chosen on, not on the held-out one"),
    # Balanced accuracy.
    Mutant("balanced_accuracy_is_accuracy", "secure_assist.metrics",
           "return float(np.mean([(predictions[labels == c] == c).mean() for c in np.unique(labels)]))",
           "return float((predictions == labels).mean())",
           ("tests/test_audit_imbalanced.py",), "label leakage scored by plain accuracy (majority share for free)"),
    # Pools and federated averaging (many devices).
    Mutant("pool_members_unbounded", "protocol.modes.pooled.pool",
           "if self.limits is not None and len(self._members) >= self.limits.max_pool_members:",
           "if self.limits is not None and len(self._members) >= 10 ** 9:",
           (f"{POOLED}::test_the_pool_bounds_members_samples_and_epochs",),
           "a pool admits members beyond max_pool_members"),
    Mutant("pool_samples_unbounded", "protocol.modes.pooled.pool",
           "if self.limits is not None and total > self.limits.max_pool_samples:",
           "if self.limits is not None and total > 10 ** 12:",
           (f"{POOLED}::test_the_pool_bounds_members_samples_and_epochs",),
           "a pool stores samples beyond max_pool_samples"),
    Mutant("pool_wait_unbounded", "protocol.modes.pooled.pool",
           "if waited > self.wait_seconds:", "if False:",
           (f"{POOLED}::test_a_member_waits_for_the_quorum_within_the_server_bound",),
           "a member may wait for a quorum forever"),
    Mutant("revoked_member_still_trained", "protocol.modes.pooled.pool",
           "members = tuple(sorted(name for name in ready if self.active(self._members[name].identity)))",
           "members = tuple(sorted(ready))",
           (f"{POOLED}::test_membership_comes_from_the_key_directory_and_revoking_drops_samples",),
           "a revoked member's samples stay in the pool's training"),
    Mutant("fedavg_update_unchecked", "secure_assist.federated.recording",
           "return (self.shapes is not None and [a.shape for a in arrays] == self.shapes",
           "return True or (self.shapes is not None and [a.shape for a in arrays] == self.shapes",
           ("tests/test_federated_fedavg.py::test_an_update_of_another_shape_is_neither_stored_nor_averaged",),
           "a FedAvg update of another shape (or not finite) is stored and averaged"),
    # The safeguard on every run (many small devices).
    Mutant("unprotected_run_not_safeguarded", "secure_assist.task_kinds.base",
           "        return VALIDATION_SHARE\n",
           "        return 0.0 if config.mechanism == (\"none\",) else VALIDATION_SHARE\n",
           ("tests/test_safeguard.py::test_an_unprotected_run_is_safeguarded_unless_turned_off",),
           "an unprotected run deploys its side output unchecked"),
    Mutant("unvalidated_side_output_deployed", "secure_assist.training.safeguard",
           "    shrink_network(side, 0.0)\n    return {\"factor\": 0.0,",
           "    return {\"factor\": 0.0,",
           ("tests/test_safeguard.py::test_a_side_output_without_validation_is_zeroed_not_only_labelled_dropped",),
           "a device with no validation sample deploys its side output anyway"),
    # Boosting rounds (secure_assist.training.rounds).
    Mutant("rounds_gaussian_not_composed", "secure_assist.mechanisms.delta",
           "root = math.sqrt(self.releases)", "root = 1.0",
           (f"{ROUNDS}::test_gaussian_noise_covers_every_round",),
           "each round adds the one-release noise: R rounds release far more than the claimed ε"),
    Mutant("dp_check_tests_one_round", "secure_assist.audit.dp_check",
           "for _ in range(instances[index].releases)]", "for _ in range(1)]",
           ("tests/test_audit_dp_check.py::test_the_check_of_a_claim_over_rounds_tests_every_round_release",),
           "the DP check tests one round's release of a claim that covers R of them"),
    Mutant("round_judged_against_backbone", "secure_assist.task_kinds.classification",
           "beaten = backbone_probs if deployed is None else device.scores(validation, deployed)[1]",
           "beaten = backbone_probs",
           (f"{ROUNDS}::test_round_two_is_judged_against_the_deployed_sum",),
           "a later round is kept for beating the backbone, not the model already deployed"),
    Mutant("rounds_unbounded", "secure_assist.config",
           "if not 1 <= self.rounds <= MAX_ROUNDS:", "if not 1 <= self.rounds:",
           (f"{ROUNDS}::test_rounds_are_bounded",), "any number of rounds (each a full session) is accepted"),
    Mutant("hello_round_unbounded", "protocol.wire.messages",
           "if number > MAX_ROUNDS:", "if number > 2 ** 31:",
           (f"{ROUNDS_TRANSPORT}::test_the_round_a_hello_names_is_bounded",),
           "a device names any round: the server opens as many round states in its namespace as it asks for"),
    Mutant("round_quota_one_round_only", "protocol.modes.host",
           "if number != 1 and endpoint.quota is not None:", "if False:",
           (f"{ROUNDS_TRANSPORT}::test_every_round_counts_against_the_devices_whole_disk_quota",),
           "each round's state gets a disk quota of its own: R rounds store R quotas' worth"),
    Mutant("earlier_round_left_open", "protocol.modes.host",
           "        self.close()  # the earlier round's endpoint", "        pass  # the earlier round's endpoint",
           (f"{ROUNDS_TRANSPORT}::test_a_new_round_closes_the_last_and_the_same_round_resumes",),
           "a new round's Hello leaves the last round's files and memory held"),
    Mutant("network_round_sent_twice", "secure_assist.training.rounds",
           "    if begun:\n", "    if False:\n",
           (f"{ROUNDS_TRANSPORT}::test_rounds_over_tls_equal_the_in_process_rounds_and_are_not_run_twice",),
           "a rerun sends a begun round's targets again, on top of the server's state of the first attempt"),
    Mutant("refresh_expansion_unbounded", "protocol.server.side_tuning",
           "        if size > limit:\n", "        if False:\n",
           (f"{ROUNDS_REFRESH}::test_the_upload_refreshed_targets_stand_for_must_fit_in_a_frame",),
           "a small refresh message makes the server read round 1's states for any number of samples into memory"),
    Mutant("refresh_outside_a_round", "protocol.server.side_tuning",
           "        if self.first_round is None:\n", "        if False:\n",
           (f"{ROUNDS_REFRESH}::test_refreshed_targets_outside_a_later_round_are_refused",),
           "refreshed targets sent to a round-1 role fail inside it (an internal error) instead of a refusal"),
    Mutant("refresh_repeats_a_sample", "protocol.wire.messages",
           "if len(np.unique(ids, axis=0)) != len(ids):", "if False:",
           (f"{ROUNDS_REFRESH}::test_a_sample_is_refreshed_once_per_message",),
           "one refresh message names a sample many times, each standing for a copy of its states"),
    Mutant("upload_of_an_empty_network", "protocol.wire.messages",
           "if 0 in acts.shape[1:] or delta.shape[1] == 0:", "if False:",
           ("tests/test_core_messages.py::test_rejects_uploads_that_describe_an_empty_network",),
           "an upload of zero classes, layers or width fails inside the server role: an unanswered, unthrottled "
           "internal error with its traceback in the server's log"),
    Mutant("training_reply_unbounded", "protocol.server.trainer",
           "if done and seconds is not None and time.monotonic() - started >= seconds:", "if False:",
           (f"{REPLIES}::test_training_replies_epoch_by_epoch_and_gives_the_single_requests_model",),
           "one training request holds the device's thread for the whole training and outlasts the device's wait"),
    Mutant("rounds_rerun_the_backbone", "secure_assist.task_kinds.classification",
           "if config.reuse_forwards or config.rounds > 1:", "if config.reuse_forwards:",
           (f"{ROUNDS}::test_rounds_after_the_first_run_no_backbone_pass",),
           "later rounds run the backbone again instead of reading the device's passes"),
)


def copy_repository(target: Path) -> None:
    """The tracked files of the repository (their working-tree content) under `target`."""
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    for name in filter(None, listed.decode().split("\0")):
        source = REPO / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)


def run_tests(root: Path, tests: tuple[str, ...], timeout: float) -> tuple[int | None, str, float]:
    """(pytest's exit code, None on timeout; its output; seconds) for `tests` in the copy at `root`."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-rf", "-p", "no:cacheprovider", *tests]
    start = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        return None, str(exc.stdout or ""), time.perf_counter() - start
    return done.returncode, done.stdout + done.stderr, time.perf_counter() - start


def first_failure(output: str) -> str | None:
    """The node id of the first failed test in pytest's short summary."""
    match = re.search(r"^(?:FAILED|ERROR) (\S+)", output, re.MULTILINE)
    return match.group(1) if match else None


def imports_from(root: Path) -> bool:
    """Whether the project's packages import from the copy (not from an installed checkout)."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    code = "import protocol, secure_assist, attacks; print(protocol.__file__, secure_assist.__file__, attacks.__file__)"
    out = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True).stdout
    files = out.split()
    return len(files) == 3 and all(Path(f).resolve().is_relative_to(root.resolve()) for f in files)


def try_mutant(root: Path, mutant: Mutant, timeout: float) -> dict:
    """Apply one mutant in the copy, run its tests, restore the file."""
    row = {"mutant": mutant.name, "module": mutant.module, "what": mutant.what, "tests": list(mutant.tests)}
    path = mutant.path(root)
    if not path.is_file():
        return {**row, "status": ERROR, "detail": f"module file {path.relative_to(root)} not found", "seconds": 0.0}
    original = path.read_text()
    count = original.count(mutant.find)
    if count != 1:
        return {**row, "status": ERROR, "seconds": 0.0,
                "detail": f"snippet found {count} times in {path.relative_to(root)} (must be exactly once)"}
    path.write_text(original.replace(mutant.find, mutant.replace))
    try:
        code, output, seconds = run_tests(root, mutant.tests, timeout)
    finally:
        path.write_text(original)
    row["seconds"] = round(seconds, 1)
    if code is None:
        return {**row, "status": TIMEOUT, "detail": f"tests ran past {timeout} s"}
    if code == 0:
        return {**row, "status": SURVIVED}
    killer = first_failure(output)
    if code == 1 and killer:
        return {**row, "status": KILLED, "killing_test": killer}
    # Collection errors, usage errors, no tests found: not a kill.
    return {**row, "status": ERROR, "detail": f"pytest exit code {code}: {output[-600:]}"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--only", action="append", metavar="NAME", help="run only this mutant (repeatable)")
    parser.add_argument("--skip-clean-check", action="store_true",
                        help="do not first run the listed tests on the unmutated copy")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per pytest run")
    args = parser.parse_args()
    if args.list:
        for mutant in MUTANTS:
            print(f"{mutant.name:40s} {mutant.module:40s} {' '.join(mutant.tests)}")
        return
    chosen = [m for m in MUTANTS if not args.only or m.name in args.only]
    unknown = set(args.only or ()) - {m.name for m in MUTANTS}
    if unknown:
        parser.error(f"unknown mutants {sorted(unknown)}; see --list")
    result: dict = {"mutants": []}
    with tempfile.TemporaryDirectory(prefix="safety-mutants-") as directory:
        root = Path(directory) / "repo"
        copy_repository(root)
        if not imports_from(root):
            sys.exit("the copy's packages do not import from the copy; check PYTHONPATH and the install")
        if not args.skip_clean_check:
            tests = tuple(dict.fromkeys(t for m in chosen for t in m.tests))
            code, output, seconds = run_tests(root, tests, args.timeout)
            result["clean_check"] = {"passed": code == 0, "seconds": round(seconds, 1)}
            if code != 0:
                result["clean_check"]["output"] = output[-2000:]
                print(json.dumps(result, indent=2))
                sys.exit(1)
        for mutant in chosen:
            row = try_mutant(root, mutant, args.timeout)
            print(f"{row['mutant']}: {row['status']} ({row.get('seconds', 0)} s)", file=sys.stderr)
            result["mutants"].append(row)
    statuses = [row["status"] for row in result["mutants"]]
    result["summary"] = {status: statuses.count(status) for status in (KILLED, SURVIVED, ERROR, TIMEOUT)}
    print(json.dumps(result, indent=2))
    sys.exit(0 if all(s == KILLED for s in statuses) else 1)


if __name__ == "__main__":
    main()
