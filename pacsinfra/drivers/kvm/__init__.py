"""KVM / libvirt driver."""
