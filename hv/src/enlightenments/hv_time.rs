//! `hv-time`: Hyper-V reference time: TIME_REF_COUNT MSR (1 exit per read) and the reference TSC page (0 exits per read), 100 ns units

super::hyperv::hyperv_enlightenment!(
    HvTime,
    "hv-time",
    super::hyperv::Features::TIME,
    [],
    "Hyper-V reference time: TIME_REF_COUNT MSR (1 exit per read) and the reference TSC page (0 exits per read), 100 ns units",
    "serves HV_X64_MSR_TIME_REF_COUNT from the host TSC; on REFERENCE_TSC enable writes the TSC page (sequence, scale = 10^4 * 2^64 / tsc_khz, offset) into guest memory"
);
