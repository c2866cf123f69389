//! `hv-tlbflush-ext`: Hyper-V Ex flushes (HvCallFlushVirtualAddressSpaceEx/ListEx): sparse VP sets and extended GVA ranges

super::hyperv::hyperv_enlightenment!(
    HvTlbflushExt,
    "hv-tlbflush-ext",
    super::hyperv::Features::TLBFLUSH_EXT,
    ["hv-tlbflush"],
    "Hyper-V Ex flushes (HvCallFlushVirtualAddressSpaceEx/ListEx): sparse VP sets and extended GVA ranges",
    "as hv-tlbflush, with sparse VP sets (banks of 64 VPs) decoded from the variable header"
);
