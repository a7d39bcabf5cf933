//! What can go wrong when an ingress gateway starts: a port that cannot be bound, a
//! certificate that cannot be read or parsed. Each error names the Gateway, the server
//! and the file, so that the fix is obvious without a debugger.

use std::net::SocketAddr;
use std::path::PathBuf;

pub use mesh_core::gateway::ServerRef;

use crate::transport::tls::TlsFileError;

/// Why an [`IngressGateway`](super::IngressGateway) could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GatewayError {
    /// A listener could not be bound.
    #[error("ingress gateway: cannot listen on {addr} for server port {port}: {source}")]
    Bind {
        /// The server port number.
        port: u32,
        /// The local address it is mapped to.
        addr: SocketAddr,
        /// The error of the operating system.
        #[source]
        source: std::io::Error,
    },
    /// A certificate, key or CA file could not be read.
    #[error("{server}: cannot read {field} `{}`: {source}", path.display())]
    ReadFile {
        /// The server whose TLS settings name the file.
        server: ServerRef,
        /// The field that names it (`serverCertificate`, `privateKey`, `caCertificates`).
        field: &'static str,
        /// The file, resolved against the directory of the Gateway's YAML file.
        path: PathBuf,
        /// The error of the operating system.
        #[source]
        source: std::io::Error,
    },
    /// A certificate, key or CA file is not the PEM it should be.
    #[error("{server}: {field} `{}`: {message}", path.display())]
    Pem {
        /// The server whose TLS settings name the file.
        server: ServerRef,
        /// The field that names it.
        field: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// The certificates and key were read but rustls refused them (a key that does not
    /// match the certificate, an unsupported key type, CA certificates that cannot
    /// verify clients).
    #[error("{server}: invalid TLS settings: {message}")]
    Tls {
        /// The server.
        server: ServerRef,
        /// rustls' explanation.
        message: String,
    },
}

impl GatewayError {
    /// The error of `server`'s TLS files.
    pub(crate) fn tls(server: &ServerRef, e: TlsFileError) -> Self {
        let server = server.clone();
        match e {
            TlsFileError::Read {
                field,
                path,
                source,
            } => GatewayError::ReadFile {
                server,
                field,
                path,
                source,
            },
            TlsFileError::Pem {
                field,
                path,
                message,
            } => GatewayError::Pem {
                server,
                field,
                path,
                message,
            },
            TlsFileError::Config { message } => GatewayError::Tls { server, message },
        }
    }
}
