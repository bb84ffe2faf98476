//! The null server: speaks just enough of the protocol to be loaded like `keeld` (handshake,
//! topic creation, produce), reads every frame and discards it, and answers each produce at
//! once with made-up offsets. What the load generator achieves against it is the ceiling of
//! the network path (loopback, framing, the client) without storage.

use std::io::{BufWriter, Read, Write};
use std::net::{TcpListener, TcpStream};

use keel_protocol::{
    encode_error, encode_response, ApiKey, ApiVersions, ErrorCode, FrameBuffer, Response,
    REQUEST_HEADER_BYTES,
};

const MAX_FRAME: u32 = 16 << 20;
/// The largest batch it says it takes: keeld's default.
const MAX_BATCH: u32 = 1 << 20;

/// Listens on `listen`, prints "null server listening on ADDR", serves until killed.
pub fn run(listen: &str) -> Result<(), String> {
    let listener = TcpListener::bind(listen).map_err(|e| format!("bind {listen}: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    println!("null server listening on {addr}");
    std::io::stdout().flush().map_err(|e| e.to_string())?;
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        std::thread::spawn(move || {
            let _ = serve(stream);
        });
    }
    Ok(())
}

fn serve(stream: TcpStream) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let mut reader = stream.try_clone()?;
    let mut out = BufWriter::with_capacity(256 * 1024, stream);
    let mut input = FrameBuffer::new(1 << 20);
    let mut next_offset = 0u64;
    loop {
        match input.next_frame_len(REQUEST_HEADER_BYTES, MAX_FRAME) {
            Ok(Some(len)) => {
                let f = input.pending();
                let api = u16::from_le_bytes([f[4], f[5]]);
                let id = u32::from_le_bytes([f[8], f[9], f[10], f[11]]);
                input.consume(len);
                answer(api, id, &mut next_offset, &mut out)?;
            }
            Ok(None) => {
                // Answers go out whenever the input runs dry, many per write.
                out.flush()?;
                match reader.read(input.make_room())? {
                    0 => return Ok(()),
                    n => input.filled(n),
                }
            }
            Err(_) => return Ok(()),
        }
    }
}

/// The partition count the null server says every topic has.
const NULL_PARTITIONS: u32 = 1024;

fn answer(api: u16, id: u32, next_offset: &mut u64, out: &mut impl Write) -> std::io::Result<()> {
    let mut frame = Vec::with_capacity(64);
    match api {
        a if a == ApiKey::Produce as u16 => {
            // One offset per request: the null server does not look inside batches.
            encode_response(
                id,
                &Response::Produce {
                    partition: 0,
                    first_offset: *next_offset,
                    last_offset: *next_offset,
                },
                &mut frame,
            );
            *next_offset += 1;
        }
        a if a == ApiKey::Handshake as u16 => encode_response(
            id,
            &Response::Handshake {
                server: "keel-bench null server".into(),
                max_frame_bytes: MAX_FRAME,
                max_batch_bytes: MAX_BATCH,
                apis: ApiKey::ALL
                    .iter()
                    .map(|&k| ApiVersions {
                        api: k as u16,
                        min: k.versions().0,
                        max: k.versions().1,
                    })
                    .collect(),
            },
            &mut frame,
        ),
        a if a == ApiKey::CreateTopic as u16 => {
            encode_response(id, &Response::CreateTopic, &mut frame)
        }
        // What a producer asks before it sends: every topic has the partitions any load
        // names, and every producer the same id (nothing is checked).
        a if a == ApiKey::Metadata as u16 => encode_response(
            id,
            &Response::Metadata {
                partitions: NULL_PARTITIONS,
            },
            &mut frame,
        ),
        a if a == ApiKey::InitProducer as u16 => encode_response(
            id,
            &Response::InitProducer {
                producer_id: 1,
                epoch: 0,
            },
            &mut frame,
        ),
        _ => encode_error(
            id,
            ErrorCode::UnsupportedApi,
            "the null server only takes produces (and what a producer asks first)",
            &mut frame,
        ),
    }
    out.write_all(&frame)
}
