"""gRPC contracts (*.proto), their generated code, and the servicers and clients built on them."""
