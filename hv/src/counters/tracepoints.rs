//! kvm:* tracepoint counters (placeholder until the real implementation lands).

/// Why tracepoints are unavailable.
#[derive(Debug, thiserror::Error)]
pub enum TracepointError {
    #[error("tracepoint counters not built yet")]
    Unavailable,
}

/// Probed once per process.
pub fn availability() -> Result<(), String> {
    Err("tracepoint counters not built yet".into())
}

/// Counters for one thread.
#[derive(Debug)]
pub struct ThreadTracepoints;

impl ThreadTracepoints {
    pub fn open(_tid: libc::pid_t) -> Result<Self, TracepointError> {
        Err(TracepointError::Unavailable)
    }
    pub fn names(&self) -> Vec<&'static str> {
        Vec::new()
    }
    pub fn read(&mut self, out: &mut Vec<u64>) -> Result<(), TracepointError> {
        out.clear();
        Ok(())
    }
}
