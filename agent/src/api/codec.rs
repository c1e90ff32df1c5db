//! The API's protobuf codec: tonic-prost's, except that a message that does not decode is
//! INVALID_ARGUMENT (the sender's fault, as gRPC's status guide has it) rather than
//! tonic-prost's INTERNAL, which would tell a client with a broken encoder to look for a
//! bug in the agent. `build.rs` points the generated server and client code here.

use std::marker::PhantomData;

use prost::Message;
use tonic::Status;
use tonic::codec::{DecodeBuf, Decoder};
use tonic_prost::ProstEncoder;

/// Protobuf encoding of `T`, decoding of `U`.
#[derive(Debug, Clone)]
pub struct Codec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for Codec<T, U> {
    fn default() -> Self {
        Codec(PhantomData)
    }
}

impl<T, U> tonic::codec::Codec for Codec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProtobufDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::default()
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProtobufDecoder(PhantomData)
    }
}

/// Decodes one `U`; a malformed message is INVALID_ARGUMENT.
#[derive(Debug, Clone)]
pub struct ProtobufDecoder<U>(PhantomData<U>);

impl<U: Message + Default> Decoder for ProtobufDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        U::decode(buf).map(Some).map_err(|e| {
            Status::invalid_argument(format!(
                "the message is not valid protobuf for this method ({e}); check that the \
                 client was generated from proto/invariant/v1/agent.proto"
            ))
        })
    }
}
