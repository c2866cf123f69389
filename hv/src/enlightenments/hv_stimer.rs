//! `hv-stimer`: Hyper-V synthetic timers STIMER0-3 (one-shot and periodic, message mode through a SINT), on the reference time of hv-time

super::hyperv::hyperv_enlightenment!(
    HvStimer,
    "hv-stimer",
    super::hyperv::Features::STIMER,
    ["hv-synic", "hv-time"],
    "Hyper-V synthetic timers STIMER0-3: one-shot and periodic, expiry as an HVMSG_TIMER_EXPIRED message into a SINT",
    "serves STIMERn_CONFIG/COUNT; one hv timer thread per partition sleeps until the next expiry and kicks the owning vCPU, which delivers the message (or vector) before it re-enters the guest"
);
