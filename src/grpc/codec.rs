//! The codec of Keystone's own services: prost's, except that a request that is not a valid
//! protobuf message of its type (invalid UTF-8 in a string, a truncated field, a wrong wire
//! type) is the caller's error, `INVALID_ARGUMENT` with the `ErrorInfo` reason
//! `INVALID_ARGUMENT` and a `BadRequest` naming the request, rather than prost's `INTERNAL`.
//! Decoding errors name fields and causes, never values.

use std::marker::PhantomData;

use prost::Message;
use tonic::{
    Status,
    codec::{BufferSettings, DecodeBuf, Decoder},
};
use tonic_prost::{ProstDecoder, ProstEncoder};

use crate::error::Error;

/// See the module documentation; named in `build.rs` as the generated services' codec.
#[derive(Debug, Clone)]
pub struct Codec<T, U> {
    _types: PhantomData<(T, U)>,
}

impl<T, U> Default for Codec<T, U> {
    fn default() -> Self {
        Self {
            _types: PhantomData,
        }
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
    type Decoder = StrictDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::default()
    }

    fn decoder(&mut self) -> Self::Decoder {
        StrictDecoder(ProstDecoder::default())
    }
}

/// prost's decoder, with its errors made the caller's.
#[derive(Debug)]
pub struct StrictDecoder<U>(ProstDecoder<U>);

impl<U: Message + Default> Decoder for StrictDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Self::Error> {
        self.0.decode(buf).map_err(|status| {
            Status::from(Error::invalid_argument(
                "request",
                format!("is not a valid protobuf message: {}", status.message()),
            ))
        })
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}
