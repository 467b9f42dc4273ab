//! Wire protocol: protocol names, size-capped control messages (request-response, CBOR) and the
//! binary framing of bulk chunk streams.
//!
//! Control: `GetProvisional{blob, from}` → `Provisional` (the chunk hashes the peer knows from
//! `from` on, ≤ 65 536 per answer, and whether it knows them all); `GetBitfield` → `Bitfield` (and a
//! 30 s subscription to `Have` pushes, sent for every chunk the peer's store gets, whoever wrote
//! it); `GetTag{reference}` → `Tag` (manifest bytes ≤ 4 MiB as a CBOR byte string); `GetIndex` →
//! `Index` (full index only).
//!
//! Chunk stream (one request per libp2p stream):
//! ```text
//! downloader → server:  [version u8 = 1][blob sha256: 32 bytes][chunk: u32 BE]
//! server → downloader:  [status u8: 0 ok | 1 busy | 2 not found | 3 declined] then, if ok, [len: u32 BE][len bytes]
//! ```
//! `declined`: the server just sent that chunk to another peer (super-seeding, see
//! `preheat_core::upload`); ask its new holder, or this server for another chunk. `busy` and
//! `declined` come only after the request waited `upload_wait` at the server without a slot or
//! with the chunk still in its resend window.
//! The reader refuses a length other than the one the chunk index says, so it never allocates or
//! reads more than one chunk.

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;
use preheat_core::bitfield::Bitfield;
use preheat_core::chunk::{MAX_CHUNK_SIZE, MIN_CHUNK_SIZE};
use preheat_core::{ChunkIndex, ChunkLayout, Digest};
use serde::{Deserialize, Serialize};

/// Kademlia protocol of the private DHT (never the public IPFS one).
pub const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/image-preheat/kad/1.0.0");
/// Control messages: chunk index, bitfield, have.
pub const CTL_PROTOCOL: StreamProtocol = StreamProtocol::new("/image-preheat/ctl/1.0.0");
/// Bulk chunk streams.
pub const CHUNK_PROTOCOL: StreamProtocol = StreamProtocol::new("/image-preheat/chunk/1.0.0");
/// Identify protocol version string; peers with another one are not added to the DHT.
pub const IDENTIFY_PROTOCOL: &str = "/image-preheat/1.0.0";

/// Size caps of control messages (an index of 64k chunks is about 4.3 MiB of CBOR hex strings).
pub const MAX_CTL_REQUEST: u64 = 4 * 1024;
pub const MAX_CTL_RESPONSE: u64 = 8 * 1024 * 1024;

const CHUNK_VERSION: u8 = 1;

/// Hashes a [`ProvisionalIndex`] answer carries at most (about 2.3 MiB of CBOR).
pub const MAX_PROVISIONAL_HASHES: u32 = 65_536;

/// A control request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CtlRequest {
    /// The full blake3 chunk index of a blob (complete, or being fetched with a known index).
    GetIndex { blob: Digest },
    /// The chunk hashes the peer knows from chunk `from` on (a provisional index while the blob is
    /// still being written, by the registry or the swarm); answered with `Provisional`.
    GetProvisional { blob: Digest, from: u32 },
    /// The tag record of a canonical image reference; answered with `Tag` or `NotFound`.
    GetTag { reference: String },
    /// Which chunks the answering peer has; also subscribes the asker to `Have` pushes for a while.
    GetBitfield { blob: Digest },
    /// Push: the sender now has this chunk.
    Have { blob: Digest, chunk: u32 },
}

/// A control response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CtlResponse {
    Index(ChunkIndex),
    /// `bits` is [`Bitfield::to_bytes`] for a blob of `chunks` chunks.
    Bitfield {
        chunks: u32,
        bits: Vec<u8>,
    },
    Provisional(ProvisionalIndex),
    Tag(TagWire),
    NotFound,
    Ack,
    Busy,
}

/// One blake3 chunk hash, encoded as a CBOR byte string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkHash(pub [u8; 32]);

impl Serialize for ChunkHash {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for ChunkHash {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = byte_buf::deserialize(d)?;
        let a: [u8; 32] = v
            .try_into()
            .map_err(|_| serde::de::Error::custom("chunk hash is not 32 bytes"))?;
        Ok(Self(a))
    }
}

/// The chunk hashes a peer knows for a blob, from chunk `from` on: a *claim*, like a full index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProvisionalIndex {
    pub blob: Digest,
    pub layout: ChunkLayout,
    pub from: u32,
    /// Hashes of chunks `from..from + len`; `None` where the peer does not know it yet.
    pub hashes: Vec<Option<ChunkHash>>,
    /// The peer knows every hash of the blob (complete blob or a full index).
    pub complete: bool,
}

/// A tag record on the wire: reference → manifest digest and bytes, with the publish time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TagWire {
    pub reference: String,
    pub manifest: Digest,
    pub media_type: String,
    #[serde(with = "byte_buf")]
    pub bytes: Vec<u8>,
    /// Publisher's clock, milliseconds since the Unix epoch: the newest record wins.
    pub published_ms: u64,
}

/// Largest manifest a tag record carries, and the caps on its strings.
pub const MAX_TAG_BYTES: usize = 4 * 1024 * 1024;
pub const MAX_REFERENCE_LEN: usize = 1024;
pub const MAX_MEDIA_TYPE_LEN: usize = 256;

/// Checks a tag record: bound to `reference`, within the caps, and `sha256(bytes) == manifest`.
pub fn check_tag(t: &TagWire, reference: &str) -> Result<(), &'static str> {
    if t.reference != reference {
        return Err("record names another reference");
    }
    if reference.len() > MAX_REFERENCE_LEN || t.media_type.len() > MAX_MEDIA_TYPE_LEN {
        return Err("reference or media type too long");
    }
    if t.bytes.len() > MAX_TAG_BYTES {
        return Err("manifest larger than 4 MiB");
    }
    if Digest::of(&t.bytes) != t.manifest {
        return Err("manifest bytes do not match the digest");
    }
    Ok(())
}

/// `Vec<u8>` as a CBOR byte string (serde's default is an array of integers, up to twice as big).
mod byte_buf {
    use serde::de::{SeqAccess, Visitor};
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a byte string")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Vec<u8>, A::Error> {
                let mut out = Vec::with_capacity(a.size_hint().unwrap_or(0).min(4096));
                while let Some(b) = a.next_element::<u8>()? {
                    out.push(b);
                }
                Ok(out)
            }
        }
        d.deserialize_byte_buf(V)
    }
}

/// Why a peer's control answer was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("unexpected answer")]
    Unexpected,
    #[error("peer does not have the blob")]
    NotFound,
    #[error("peer is busy")]
    Busy,
    #[error("chunk index is for another blob or size")]
    IndexMismatch,
    #[error("malformed chunk index")]
    BadIndex(#[from] preheat_core::chunk::ChunkIndexError),
    #[error("malformed bitfield")]
    BadBitfield(#[from] preheat_core::bitfield::BitfieldError),
}

/// Checks an index answer against the blob we asked for.
pub fn check_index(
    resp: CtlResponse,
    blob: &Digest,
    size: u64,
) -> Result<ChunkIndex, ProtocolError> {
    match resp {
        CtlResponse::Index(idx) => {
            idx.validate()?;
            if idx.blob != *blob || idx.layout.size != size {
                return Err(ProtocolError::IndexMismatch);
            }
            Ok(idx)
        }
        other => Err(unexpected(other)),
    }
}

/// Checks a provisional index answer against the blob we asked for and the `from` we sent.
pub fn check_provisional(
    resp: CtlResponse,
    blob: &Digest,
    size: u64,
    from: u32,
) -> Result<ProvisionalIndex, ProtocolError> {
    match resp {
        CtlResponse::Provisional(p) => {
            let cs = p.layout.chunk_size;
            if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&cs) {
                return Err(ProtocolError::BadIndex(
                    preheat_core::chunk::ChunkIndexError::ChunkSize(cs),
                ));
            }
            if p.blob != *blob || p.layout.size != size || p.from != from {
                return Err(ProtocolError::IndexMismatch);
            }
            let end = u64::from(p.from) + p.hashes.len() as u64;
            if end > u64::from(p.layout.count()) {
                return Err(ProtocolError::BadIndex(
                    preheat_core::chunk::ChunkIndexError::HashCount {
                        got: p.hashes.len(),
                        want: p.layout.count().saturating_sub(p.from),
                    },
                ));
            }
            Ok(p)
        }
        other => Err(unexpected(other)),
    }
}

/// Checks a bitfield answer against the chunk count of the index we use.
pub fn check_bitfield(resp: CtlResponse, chunks: u32) -> Result<Bitfield, ProtocolError> {
    match resp {
        CtlResponse::Bitfield { chunks: n, bits } if n == chunks => {
            Ok(Bitfield::from_bytes(n, &bits)?)
        }
        CtlResponse::Bitfield { .. } => Err(ProtocolError::IndexMismatch),
        other => Err(unexpected(other)),
    }
}

fn unexpected(resp: CtlResponse) -> ProtocolError {
    match resp {
        CtlResponse::NotFound => ProtocolError::NotFound,
        CtlResponse::Busy => ProtocolError::Busy,
        _ => ProtocolError::Unexpected,
    }
}

/// Status byte of a chunk stream answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkStatus {
    Ok,
    Busy,
    NotFound,
    Declined,
}

pub async fn write_chunk_request<S: AsyncWrite + Unpin>(
    s: &mut S,
    blob: &Digest,
    chunk: u32,
) -> std::io::Result<()> {
    let mut buf = [0u8; 37];
    buf[0] = CHUNK_VERSION;
    buf[1..33].copy_from_slice(blob.as_bytes());
    buf[33..].copy_from_slice(&chunk.to_be_bytes());
    s.write_all(&buf).await?;
    s.flush().await
}

pub async fn read_chunk_request<S: AsyncRead + Unpin>(s: &mut S) -> std::io::Result<(Digest, u32)> {
    let mut buf = [0u8; 37];
    s.read_exact(&mut buf).await?;
    if buf[0] != CHUNK_VERSION {
        return Err(invalid("unknown chunk protocol version"));
    }
    let mut d = [0u8; 32];
    d.copy_from_slice(&buf[1..33]);
    let mut c = [0u8; 4];
    c.copy_from_slice(&buf[33..]);
    Ok((Digest::from_bytes(d), u32::from_be_bytes(c)))
}

/// Writes the status byte; for `Ok` the caller follows with [`write_chunk_len`] and the bytes.
pub async fn write_status<S: AsyncWrite + Unpin>(
    s: &mut S,
    st: ChunkStatus,
) -> std::io::Result<()> {
    let b = match st {
        ChunkStatus::Ok => 0u8,
        ChunkStatus::Busy => 1,
        ChunkStatus::NotFound => 2,
        ChunkStatus::Declined => 3,
    };
    s.write_all(&[b]).await?;
    if st != ChunkStatus::Ok {
        s.flush().await?;
    }
    Ok(())
}

pub async fn write_chunk_len<S: AsyncWrite + Unpin>(s: &mut S, len: u32) -> std::io::Result<()> {
    s.write_all(&len.to_be_bytes()).await
}

/// Reads the status and, for `Ok`, the length, which must equal `expected_len`.
pub async fn read_chunk_header<S: AsyncRead + Unpin>(
    s: &mut S,
    expected_len: u32,
) -> std::io::Result<ChunkStatus> {
    let mut b = [0u8; 1];
    s.read_exact(&mut b).await?;
    match b[0] {
        0 => {
            let mut l = [0u8; 4];
            s.read_exact(&mut l).await?;
            if u32::from_be_bytes(l) != expected_len {
                return Err(invalid("chunk length differs from the index"));
            }
            Ok(ChunkStatus::Ok)
        }
        1 => Ok(ChunkStatus::Busy),
        2 => Ok(ChunkStatus::NotFound),
        3 => Ok(ChunkStatus::Declined),
        _ => Err(invalid("unknown chunk status")),
    }
}

fn invalid(msg: &'static str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg)
}

#[cfg(test)]
mod tests;
