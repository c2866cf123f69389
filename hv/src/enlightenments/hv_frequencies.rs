//! `hv-frequencies`: Hyper-V frequency MSRs: TSC and APIC timer frequencies without calibration

super::hyperv::hyperv_enlightenment!(
    HvFrequencies,
    "hv-frequencies",
    super::hyperv::Features::FREQUENCIES,
    [],
    "Hyper-V frequency MSRs: TSC and APIC timer frequencies without calibration",
    "serves HV_X64_MSR_TSC_FREQUENCY (KVM_GET_TSC_KHZ * 1000) and HV_X64_MSR_APIC_FREQUENCY (1 GHz, KVM's APIC bus)"
);
