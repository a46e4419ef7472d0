"""The edgespec wire protocol: versioned binary frames over ZeroMQ multipart messages."""
