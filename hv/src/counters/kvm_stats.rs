//! KVM binary stats fd reader (placeholder until the real reader lands: reports unavailable).

/// Why stats are unavailable.
#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    #[error("KVM stats reader not built yet")]
    Unavailable,
}

/// Reader for one stats fd.
#[derive(Debug)]
pub struct KvmStatsReader {
    names: Vec<String>,
}

impl KvmStatsReader {
    pub fn for_vm(_vm: &kvm_ioctls::VmFd) -> Result<Self, StatsError> {
        Err(StatsError::Unavailable)
    }
    pub fn for_vcpu(_vcpu: &kvm_ioctls::VcpuFd) -> Result<Self, StatsError> {
        Err(StatsError::Unavailable)
    }
    pub fn names(&self) -> &[String] {
        &self.names
    }
    pub fn read(&self, out: &mut Vec<u64>) -> Result<(), StatsError> {
        out.clear();
        Ok(())
    }
}
