//! The null server: speaks just enough of the protocol to be loaded like `keeld` (handshake,
//! topic creation, produce), reads every frame and discards it, and answers each produce at
//! once with made-up offsets. What the load generator achieves against it is the ceiling of
//! the network path (loopback, framing, the client) without storage.

use std::io::{BufWriter, Read, Write};
use std::net::{TcpListener, TcpStream};

use keel_protocol::{
    encode_error, encode_response, frame_len, ApiKey, ApiVersions, ErrorCode, Response,
    REQUEST_HEADER_BYTES,
};

const MAX_FRAME: u32 = 16 << 20;

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
    let mut buf = vec![0u8; 1 << 20];
    let (mut start, mut end) = (0, 0);
    let mut next_offset = 0u64;
    loop {
        match frame_len(&buf[start..end], REQUEST_HEADER_BYTES, MAX_FRAME) {
            Ok(Some(len)) => {
                let f = &buf[start..start + len];
                let api = u16::from_le_bytes([f[4], f[5]]);
                let id = u32::from_le_bytes([f[8], f[9], f[10], f[11]]);
                start += len;
                answer(api, id, &mut next_offset, &mut out)?;
            }
            Ok(None) => {
                // Answers go out whenever the input runs dry, many per write.
                out.flush()?;
                buf.copy_within(start..end, 0);
                end -= start;
                start = 0;
                if end >= 4 {
                    let need = 4 + u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
                    if buf.len() < need {
                        buf.resize(need, 0);
                    }
                }
                match reader.read(&mut buf[end..])? {
                    0 => return Ok(()),
                    n => end += n,
                }
            }
            Err(_) => return Ok(()),
        }
    }
}

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
        _ => encode_error(
            id,
            ErrorCode::UnsupportedApi,
            "the null server only takes produces",
            &mut frame,
        ),
    }
    out.write_all(&frame)
}
