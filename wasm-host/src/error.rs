//! The error type of the host: what went wrong while loading or driving a module.
//!
//! A trap inside a request is not an error of the API: it is reported in the request's
//! [`Outcome`](crate::Outcome). Errors are for what a test cannot continue after: a module that
//! does not compile or does not speak ABI 0.2.1, a trap during VM start or configure, misuse of
//! the API.

use std::fmt;

/// An error of the wasm host. Lower-case message, cause through [`std::error::Error::source`].
#[derive(Debug)]
pub struct Error {
    kind: Kind,
    message: String,
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Load,
    Abi,
    Trap,
    VmFailed,
    Io,
    Internal,
}

impl Error {
    pub(crate) fn load(message: impl Into<String>, source: wasmtime::Error) -> Error {
        Error::with_source(Kind::Load, message, source)
    }

    pub(crate) fn abi(message: impl Into<String>) -> Error {
        Error::new(Kind::Abi, message)
    }

    pub(crate) fn trap(message: impl Into<String>) -> Error {
        Error::new(Kind::Trap, message)
    }

    pub(crate) fn vm_failed(message: impl Into<String>) -> Error {
        Error::new(Kind::VmFailed, message)
    }

    pub(crate) fn io(message: impl Into<String>, source: std::io::Error) -> Error {
        Error { kind: Kind::Io, message: message.into(), source: Some(Box::new(source)) }
    }

    pub(crate) fn internal(message: impl Into<String>) -> Error {
        Error::new(Kind::Internal, message)
    }

    fn new(kind: Kind, message: impl Into<String>) -> Error {
        Error { kind, message: message.into(), source: None }
    }

    fn with_source(kind: Kind, message: impl Into<String>, source: wasmtime::Error) -> Error {
        let source: Box<dyn std::error::Error + Send + Sync> = source.into();
        Error { kind, message: message.into(), source: Some(source) }
    }

    /// The module could not be compiled, linked or instantiated.
    pub fn is_load(&self) -> bool {
        self.kind == Kind::Load
    }

    /// The module does not implement Proxy-Wasm ABI 0.2.1 (missing export, wrong signature).
    pub fn is_abi(&self) -> bool {
        self.kind == Kind::Abi
    }

    /// The module trapped (panicked) outside a request: VM start, configure, tick, a callout
    /// response. The VM is failed afterwards.
    pub fn is_trap(&self) -> bool {
        self.kind == Kind::Trap
    }

    /// The VM had already failed (an earlier trap); nothing was run.
    pub fn is_vm_failed(&self) -> bool {
        self.kind == Kind::VmFailed
    }

    /// A `.wasm` file could not be read.
    pub fn is_io(&self) -> bool {
        self.kind == Kind::Io
    }

    /// A bug or a poisoned lock in the host itself.
    pub fn is_internal(&self) -> bool {
        self.kind == Kind::Internal
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some(source) = &self.source {
            write!(f, ": {source}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_ref().map(|source| source.as_ref() as &(dyn std::error::Error + 'static))
    }
}

/// The result type of the host API.
pub type Result<T, E = Error> = std::result::Result<T, E>;
