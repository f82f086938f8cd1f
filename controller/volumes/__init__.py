"""The CSI Controller service: validating requests, placing volumes, sizing, naming."""
