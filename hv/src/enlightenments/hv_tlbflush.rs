//! `hv-tlbflush`: Hyper-V remote TLB flush (HvCallFlushVirtualAddressSpace/List): one hypercall exit flushes the named vCPUs, no IPI

super::hyperv::hyperv_enlightenment!(
    HvTlbflush,
    "hv-tlbflush",
    super::hyperv::Features::TLBFLUSH,
    ["hv-vpindex"],
    "Hyper-V remote TLB flush (HvCallFlushVirtualAddressSpace/List): one hypercall exit flushes the named vCPUs, no IPI",
    "decodes the call, marks the target vCPUs, kicks running ones out of KVM_RUN and waits until each is out; each drops its translations (KVM_SET_SREGS toggling CR4.PGE) before it next runs guest code"
);
