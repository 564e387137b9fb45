"""Guest-side runtime shared by guest kernels: the hypercall interface and address-space helpers."""
