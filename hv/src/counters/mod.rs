pub mod kvm_stats;
pub mod tracepoints;
