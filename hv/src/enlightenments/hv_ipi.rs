//! `hv-ipi`: Hyper-V synthetic cluster IPI (HvCallSendSyntheticClusterIpi/Ex): one hypercall exit sends a vector to a set of vCPUs

super::hyperv::hyperv_enlightenment!(
    HvIpi,
    "hv-ipi",
    super::hyperv::Features::IPI,
    ["hv-vpindex"],
    "Hyper-V synthetic cluster IPI (HvCallSendSyntheticClusterIpi/Ex): one hypercall exit sends a vector to a set of vCPUs",
    "decodes the VP mask or sparse VP set and sends one KVM_SIGNAL_MSI per named vCPU"
);
