"""What the inline enforcers did, from the kernel to NATS: record decoding, the bounded queue, the publisher."""
