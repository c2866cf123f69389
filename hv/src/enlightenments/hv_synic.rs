//! `hv-synic`: Hyper-V synthetic interrupt controller: SCONTROL/SIEFP/SIMP/EOM/SINT0-15 MSRs, message slots and event flags, HvCallPostMessage and HvCallSignalEvent

super::hyperv::hyperv_enlightenment!(
    HvSynic,
    "hv-synic",
    super::hyperv::Features::SYNIC,
    ["hv-vpindex"],
    "Hyper-V synthetic interrupt controller: SynIC MSRs, message slots with EOM redelivery, event flags, HvCallPostMessage/HvCallSignalEvent",
    "serves the SynIC MSRs (1 exit each), writes messages and event flags into the guest's SIMP/SIEFP pages and raises the SINT's vector with one KVM_SIGNAL_MSI; no auto-EOI (the guest EOIs its LAPIC)"
);
