//! `hv-relaxed`: Hyper-V relaxed timing recommendation: the guest should not treat watchdog timeouts as fatal

super::hyperv::hyperv_enlightenment!(
    HvRelaxed,
    "hv-relaxed",
    super::hyperv::Features::RELAXED,
    [],
    "Hyper-V relaxed timing recommendation: the guest should not treat watchdog timeouts as fatal",
    "sets CPUID 0x40000004 EAX bit 5; nothing else on the host side"
);
