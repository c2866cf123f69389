//! `hv-spinlocks`: Hyper-V long spin notification (HvCallNotifyLongSpinWait after the retry count in CPUID 0x40000004 EBX)

super::hyperv::hyperv_enlightenment!(
    HvSpinlocks,
    "hv-spinlocks",
    super::hyperv::Features::SPINLOCKS,
    [],
    "Hyper-V long spin notification (HvCallNotifyLongSpinWait after the retry count in CPUID 0x40000004 EBX)",
    "yields the caller's host thread (sched_yield) in favour of the partition's other vCPUs"
);
