"""The tamper-evident trail: signed checkpoints and the offline verifier (`sealgw audit verify`)."""
