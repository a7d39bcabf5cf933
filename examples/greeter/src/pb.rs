//! The messages of `proto/helloworld.proto`, written by hand with prost's derive (what
//! `prost-build` would generate, without needing `protoc` at build time).

/// Who to greet.
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct HelloRequest {
    /// The name.
    #[prost(string, tag = "1")]
    pub name: String,
}

/// The greeting: it says which version answered and who the caller was.
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct HelloReply {
    /// The message.
    #[prost(string, tag = "1")]
    pub message: String,
}

/// The new greeting.
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct SetGreetingRequest {
    /// The greeting ("Hello" by default).
    #[prost(string, tag = "1")]
    pub greeting: String,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use prost::Message;

    use super::*;

    #[test]
    fn the_wire_format_is_protobufs() {
        // Field 1, length-delimited (0x0a), 5 bytes.
        let bytes = HelloRequest {
            name: "world".into(),
        }
        .encode_to_vec();
        assert_eq!(bytes, b"\x0a\x05world");
        assert_eq!(HelloReply::decode(&bytes[..]).unwrap().message, "world");
    }
}
