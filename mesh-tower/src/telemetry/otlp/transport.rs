//! Sending one export: OTLP/HTTP as a `POST` of protobuf through hyper-util's client,
//! OTLP/gRPC over HTTP/2 with prior knowledge through the same client and tonic's codec
//! (no tonic transport), both bounded by the export's timeout.

use std::error::Error as StdError;
use std::time::Duration;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderValue, Method, Request, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use prost::Message;

use super::{OtlpConfig, OtlpError, Protocol, Signal, chain};

/// The largest collector response read (its body only says what it rejected).
const MAX_RESPONSE_BYTES: usize = 1 << 20;

/// `google.rpc.Status`: the body of an OTLP/HTTP error response.
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
}

/// Sends one signal's exports to its collector.
#[derive(Debug, Clone)]
pub(super) struct Transport {
    signal: Signal,
    endpoint: Uri,
    /// `endpoint` as errors name it.
    name: String,
    headers: HeaderMap,
    timeout: Duration,
    client: Clients,
}

#[derive(Debug, Clone)]
enum Clients {
    Http(Client<HttpConnector, Full<Bytes>>),
    Grpc(Client<HttpConnector, tonic::body::Body>),
}

impl Transport {
    pub(super) fn new(signal: Signal, config: &OtlpConfig, timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(timeout));
        let mut builder = Client::builder(TokioExecutor::new());
        let (client, endpoint) = match config.protocol() {
            Protocol::HttpProtobuf => (
                Clients::Http(builder.build(connector)),
                config.endpoint().clone(),
            ),
            // The method's path replaces the endpoint's.
            Protocol::Grpc => (
                Clients::Grpc(builder.http2_only(true).build(connector)),
                origin(config.endpoint()),
            ),
        };
        Transport {
            signal,
            name: config.endpoint().to_string(),
            endpoint,
            headers: config.headers().clone(),
            timeout,
            client,
        }
    }

    /// Sends `message`; the collector's answer.
    pub(super) async fn send<Req, Resp>(&self, message: Req) -> Result<Resp, OtlpError>
    where
        Req: Message + Send + 'static,
        Resp: Message + Default + Send + 'static,
    {
        let sent = async {
            match &self.client {
                Clients::Http(c) => self.post(c, message).await,
                Clients::Grpc(c) => self.call(c, message).await,
            }
        };
        tokio::time::timeout(self.timeout, sent)
            .await
            .unwrap_or_else(|_| {
                Err(OtlpError::Timeout {
                    endpoint: self.name.clone(),
                    timeout: self.timeout,
                })
            })
    }

    fn transport_error(&self, message: String) -> OtlpError {
        OtlpError::Transport {
            endpoint: self.name.clone(),
            message,
        }
    }

    async fn post<Req: Message, Resp: Message + Default>(
        &self,
        client: &Client<HttpConnector, Full<Bytes>>,
        message: Req,
    ) -> Result<Resp, OtlpError> {
        let mut req = Request::new(Full::new(Bytes::from(message.encode_to_vec())));
        *req.method_mut() = Method::POST;
        *req.uri_mut() = self.endpoint.clone();
        let headers = req.headers_mut();
        headers.extend(self.headers.clone());
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/x-protobuf"),
        );
        let resp = client
            .request(req)
            .await
            .map_err(|e| self.transport_error(chain(&e)))?;
        let status = resp.status();
        let body = Limited::new(resp.into_body(), MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map(|b| b.to_bytes())
            .map_err(|e| self.transport_error(format!("reading the response: {e}")))?;
        if !status.is_success() {
            let message = RpcStatus::decode(body)
                .map(|s| s.message)
                .unwrap_or_default();
            return Err(OtlpError::Http {
                endpoint: self.name.clone(),
                status: status.as_u16(),
                message,
            });
        }
        // A collector that answers success with another body accepted everything.
        Ok(Resp::decode(body).unwrap_or_default())
    }

    async fn call<Req, Resp>(
        &self,
        client: &Client<HttpConnector, tonic::body::Body>,
        message: Req,
    ) -> Result<Resp, OtlpError>
    where
        Req: Message + Send + 'static,
        Resp: Message + Default + Send + 'static,
    {
        let mut grpc = tonic::client::Grpc::with_origin(client.clone(), self.endpoint.clone());
        grpc.ready()
            .await
            .map_err(|e| self.transport_error(chain(&e)))?;
        let mut request = tonic::Request::new(message);
        *request.metadata_mut() = tonic::metadata::MetadataMap::from_headers(self.headers.clone());
        request.set_timeout(self.timeout);
        let codec = tonic_prost::ProstCodec::<Req, Resp>::default();
        let path = PathAndQuery::from_static(self.signal.grpc_path());
        match grpc.unary(request, path, codec).await {
            Ok(resp) => Ok(resp.into_inner()),
            // A status made of the connection's own error: nothing was answered.
            Err(status) if StdError::source(&status).is_some() => {
                let cause = StdError::source(&status).map_or_else(String::new, chain);
                Err(self.transport_error(cause))
            }
            Err(status) => Err(OtlpError::Grpc {
                endpoint: self.name.clone(),
                code: status.code() as i32,
                message: status.message().to_string(),
            }),
        }
    }
}

/// The scheme and authority of `uri`, without its path.
fn origin(uri: &Uri) -> Uri {
    let mut parts = http::uri::Parts::default();
    parts.scheme = uri.scheme().cloned();
    parts.authority = uri.authority().cloned();
    parts.path_and_query = Some(PathAndQuery::from_static("/"));
    Uri::from_parts(parts).unwrap_or_else(|_| uri.clone())
}
