//! `hv-vpindex`: Hyper-V VP index MSR (HV_X64_MSR_VP_INDEX): each vCPU learns the number the TLFS calls name it by

super::hyperv::hyperv_enlightenment!(
    HvVpindex,
    "hv-vpindex",
    super::hyperv::Features::VPINDEX,
    [],
    "Hyper-V VP index MSR (HV_X64_MSR_VP_INDEX): each vCPU learns the number the TLFS calls name it by",
    "serves HV_X64_MSR_VP_INDEX (= vCPU index = APIC ID) from the MSR exit; CPUID 0x40000003 EAX bit 6"
);
