"""Container runtimes: Docker, containerd and CRI-O containers as facts for the composer."""
