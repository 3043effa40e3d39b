"""The BPF toolchain every node service shares: the kernel ABI (abi, checked by abicheck against the
BTF progbtf reads back), BTF reading, the header tree bcc compiles against, path decoding, kernel names."""
