//! `hv-stimer-direct`: Hyper-V synthetic timers in direct mode: expiry raises the timer's own vector, no message

super::hyperv::hyperv_enlightenment!(
    HvStimerDirect,
    "hv-stimer-direct",
    super::hyperv::Features::STIMER_DIRECT,
    ["hv-stimer"],
    "Hyper-V synthetic timers in direct mode: expiry raises the timer's own APIC vector without a SynIC message",
    "accepts CONFIG.direct_mode; an expiry sends the timer's vector with one KVM_SIGNAL_MSI"
);
