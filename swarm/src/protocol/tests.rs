//! Wire checks and framing.

use super::*;
use futures::io::Cursor;

#[tokio::test]
async fn chunk_framing_roundtrips_and_rejects_wrong_length() {
    let d = Digest::of(b"x");
    let mut w = Cursor::new(Vec::new());
    write_chunk_request(&mut w, &d, 7).await.unwrap();
    let mut r = Cursor::new(w.into_inner());
    assert_eq!(read_chunk_request(&mut r).await.unwrap(), (d, 7));

    let mut w = Cursor::new(Vec::new());
    write_status(&mut w, ChunkStatus::Ok).await.unwrap();
    write_chunk_len(&mut w, 5).await.unwrap();
    let bytes = w.into_inner();
    assert_eq!(
        read_chunk_header(&mut Cursor::new(bytes.clone()), 5)
            .await
            .unwrap(),
        ChunkStatus::Ok
    );
    assert!(read_chunk_header(&mut Cursor::new(bytes), 6).await.is_err());
    for st in [
        ChunkStatus::Busy,
        ChunkStatus::NotFound,
        ChunkStatus::Declined,
    ] {
        let mut w = Cursor::new(Vec::new());
        write_status(&mut w, st).await.unwrap();
        let mut r = Cursor::new(w.into_inner());
        assert_eq!(read_chunk_header(&mut r, 5).await.unwrap(), st);
    }
    assert!(read_chunk_header(&mut Cursor::new(vec![4u8]), 5)
        .await
        .is_err());
    assert!(read_chunk_request(&mut Cursor::new(vec![9u8; 37]))
        .await
        .is_err());
}

#[test]
fn provisional_answers_are_checked_and_tags_bound_to_their_bytes() {
    let d = Digest::of(b"blob");
    let layout = ChunkLayout::new(4 * 65_536, 65_536);
    let page = |from, n: usize, layout| {
        CtlResponse::Provisional(ProvisionalIndex {
            blob: d,
            layout,
            from,
            hashes: vec![Some(ChunkHash([7; 32])); n],
            complete: false,
        })
    };
    let ok = check_provisional(page(1, 3, layout), &d, layout.size, 1).unwrap();
    assert_eq!(ok.hashes.len(), 3);
    // Past the end, another `from`, another size, a tiny chunk size, another blob.
    assert!(check_provisional(page(1, 4, layout), &d, layout.size, 1).is_err());
    assert!(check_provisional(page(0, 1, layout), &d, layout.size, 1).is_err());
    assert!(check_provisional(page(0, 1, layout), &d, layout.size + 1, 0).is_err());
    let tiny = ChunkLayout::new(layout.size, 1024);
    assert!(check_provisional(page(0, 1, tiny), &d, layout.size, 0).is_err());
    assert!(check_provisional(page(0, 1, layout), &Digest::of(b"x"), layout.size, 0).is_err());

    let body = br#"{"schemaVersion":2}"#.to_vec();
    let mut t = TagWire {
        reference: "docker.io/library/nginx:latest".into(),
        manifest: Digest::of(&body),
        media_type: "application/vnd.oci.image.manifest.v1+json".into(),
        bytes: body,
        published_ms: 1,
    };
    assert!(check_tag(&t, "docker.io/library/nginx:latest").is_ok());
    assert!(check_tag(&t, "docker.io/library/nginx:1").is_err());
    t.bytes.push(b' ');
    assert!(check_tag(&t, "docker.io/library/nginx:latest").is_err());
}

#[tokio::test]
async fn tag_bytes_and_hashes_travel_as_cbor_byte_strings() {
    use libp2p::request_response::Codec;
    let mut codec =
        libp2p::request_response::cbor::codec::Codec::<CtlRequest, CtlResponse>::default()
            .set_response_size_maximum(MAX_CTL_RESPONSE);
    let body = vec![0xffu8; MAX_TAG_BYTES];
    let resp = CtlResponse::Tag(TagWire {
        reference: "r".into(),
        manifest: Digest::of(&body),
        media_type: "m".into(),
        bytes: body,
        published_ms: 2,
    });
    let mut buf = Vec::new();
    codec
        .write_response(
            &CTL_PROTOCOL,
            &mut futures::io::Cursor::new(&mut buf),
            resp.clone(),
        )
        .await
        .unwrap();
    assert!(
        buf.len() < MAX_TAG_BYTES + 1024,
        "{} bytes on the wire",
        buf.len()
    );
    let back = codec
        .read_response(&CTL_PROTOCOL, &mut futures::io::Cursor::new(buf))
        .await
        .unwrap();
    assert_eq!(back, resp);
}

#[test]
fn index_and_bitfield_answers_are_checked() {
    let data = vec![1u8; 200_000];
    let layout = preheat_core::ChunkLayout::new(200_000, 65_536);
    let hashes = data
        .chunks(65_536)
        .map(preheat_core::chunk::chunk_hash)
        .collect();
    let d = Digest::of(&data);
    let idx = ChunkIndex {
        blob: d,
        layout,
        hashes,
    };
    assert!(check_index(CtlResponse::Index(idx.clone()), &d, 200_000).is_ok());
    assert_eq!(
        check_index(
            CtlResponse::Index(idx.clone()),
            &Digest::of(b"other"),
            200_000
        ),
        Err(ProtocolError::IndexMismatch)
    );
    let mut short = idx;
    short.hashes.pop();
    assert!(matches!(
        check_index(CtlResponse::Index(short), &d, 200_000),
        Err(ProtocolError::BadIndex(_))
    ));
    let bf = CtlResponse::Bitfield {
        chunks: 4,
        bits: vec![0b1010_0000],
    };
    assert_eq!(check_bitfield(bf.clone(), 4).unwrap().count_ones(), 2);
    assert!(check_bitfield(bf, 5).is_err());
    let trailing = CtlResponse::Bitfield {
        chunks: 4,
        bits: vec![0b0000_1000],
    };
    assert!(check_bitfield(trailing, 4).is_err());
    assert_eq!(
        check_bitfield(CtlResponse::NotFound, 4).unwrap_err(),
        ProtocolError::NotFound
    );
}
