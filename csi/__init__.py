"""The CSI plumbing: generated protobuf stubs and the gRPC server."""
