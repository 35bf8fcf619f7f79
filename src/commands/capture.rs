//! Capture files for `replay`, read with the `pcap-file` crate: classic
//! pcap (microsecond and nanosecond, either byte order) and pcapng with any
//! number of sections and interfaces, each interface with its own link type
//! and timestamp resolution (a capture merged from several interfaces, or
//! `tcpdump -i any` next to `-i nflog`).
//!
//! Whatever cannot be read is an error that says how far the reading got
//! ([`Unreadable`]), except a last record cut short (the capture was killed
//! while writing), which [`Frames::read`] reports as [`Next::Torn`].

use crate::source::pcap::Link;
use pcap_file::pcap::{PcapReadError, PcapReader, PcapTsResolution};
use pcap_file::pcapng::blocks::block_common::Block;
use pcap_file::pcapng::{PcapNgReadError, PcapNgReader};
use pcap_file::{DataLink, Endianness};
use std::borrow::Cow;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::time::Duration;

/// The reader's buffer: the largest record it can read (tcpdump's largest
/// snaplen is 256 KiB).
const BUFFER: usize = 1 << 20;

/// One packet: its link type, its time since the epoch, its bytes.
pub struct Frame<'a> {
    pub link: Link,
    pub time: Duration,
    pub data: Cow<'a, [u8]>,
}

/// What went wrong, and how far the reading got.
#[derive(Debug)]
pub struct Unreadable {
    pub reason: String,
    /// Packets read before it.
    pub packets: u64,
}

impl std::fmt::Display for Unreadable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (after {} packets)", self.reason, self.packets)
    }
}

/// What [`Frames::read`] found.
pub enum Next<'a> {
    Frame(Frame<'a>),
    /// The file ends inside a record: everything before it was read.
    Torn,
    End,
}

enum Format<R: Read> {
    Pcap {
        reader: Box<PcapReader<R>>,
        link: Link,
        nanos: bool,
    },
    PcapNg {
        reader: Box<PcapNgReader<R>>,
        /// The time of the last packet, for simple packet blocks (which
        /// carry none).
        last: Duration,
    },
}

/// The packets of a capture file, in file order.
pub struct Frames<R: Read = File> {
    format: Format<R>,
    packets: u64,
    /// The last pcapng packet's bytes.
    buffer: Vec<u8>,
}

/// The name libpcap gives a link type, or its number.
fn link_name(link: DataLink) -> String {
    format!("{link:?}")
}

fn unsupported(link: DataLink) -> String {
    format!(
        "link type {} ({}) is not one replay reads",
        link_name(link),
        u32::from(link)
    )
}

impl Frames<File> {
    /// Opens `path`, which starts with a pcap or pcapng magic number.
    pub fn open(path: &Path) -> Result<Frames<File>, Unreadable> {
        let fail = |reason: String| Unreadable { reason, packets: 0 };
        let mut magic = [0u8; 4];
        let mut file = File::open(path).map_err(|e| fail(e.to_string()))?;
        file.read_exact(&mut magic)
            .map_err(|_| fail("too short for a capture".into()))?;
        file.seek(SeekFrom::Start(0))
            .map_err(|e| fail(e.to_string()))?;
        Frames::new(magic, file, BUFFER)
    }
}

impl<'a> Frames<&'a [u8]> {
    /// A capture held in memory (the fuzz target's).
    pub fn from_bytes(bytes: &'a [u8]) -> Result<Frames<&'a [u8]>, Unreadable> {
        let magic: [u8; 4] = bytes
            .get(..4)
            .and_then(|m| m.try_into().ok())
            .ok_or(Unreadable {
                reason: "too short for a capture".into(),
                packets: 0,
            })?;
        // All of it fits: no record can be longer.
        Frames::new(magic, bytes, bytes.len().max(64))
    }
}

impl<R: Read> Frames<R> {
    /// Reads `input`, whose first 4 bytes are `magic`, through a buffer of
    /// `capacity` bytes.
    fn new(magic: [u8; 4], input: R, capacity: usize) -> Result<Frames<R>, Unreadable> {
        let fail = |reason: String| Unreadable { reason, packets: 0 };
        let file = input;
        let format = if magic == [0x0a, 0x0d, 0x0d, 0x0a] {
            let reader = PcapNgReader::with_capacity(file, capacity)
                .map_err(|e| fail(format!("not a readable pcapng: {}", ng_reason(&e))))?;
            Format::PcapNg {
                reader: Box::new(reader),
                last: Duration::ZERO,
            }
        } else {
            let reader = PcapReader::with_capacity(file, capacity)
                .map_err(|e| fail(format!("not a readable pcap: {}", pcap_reason(&e))))?;
            let header = reader.header();
            let link = Link::of(
                u32::from(header.datalink),
                header.endianness == Endianness::Big,
            )
            .ok_or_else(|| fail(unsupported(header.datalink)))?;
            Format::Pcap {
                nanos: header.ts_resolution == PcapTsResolution::NanoSecond,
                reader: Box::new(reader),
                link,
            }
        };
        Ok(Frames {
            format,
            packets: 0,
            buffer: Vec::new(),
        })
    }

    /// Packets read so far.
    pub fn packets(&self) -> u64 {
        self.packets
    }

    /// The next packet.
    pub fn read(&mut self) -> Result<Next<'_>, Unreadable> {
        let packets = self.packets;
        let fail = |reason: String| Unreadable { reason, packets };
        match &mut self.format {
            Format::Pcap {
                reader,
                link,
                nanos,
            } => {
                // Raw records: a record longer than the header's snaplen (some
                // writers get it wrong) is read all the same.
                let packet = match reader.next_raw_packet() {
                    None => return Ok(Next::End),
                    Some(Ok(packet)) => packet,
                    Some(Err(PcapReadError::Io(e)))
                        if e.kind() == std::io::ErrorKind::UnexpectedEof =>
                    {
                        return Ok(Next::Torn)
                    }
                    Some(Err(e)) => return Err(fail(pcap_reason(&e))),
                };
                let frac = u64::from(packet.ts_frac);
                let frac = if *nanos {
                    Duration::from_nanos(frac.min(999_999_999))
                } else {
                    Duration::from_micros(frac.min(999_999))
                };
                self.packets += 1;
                Ok(Next::Frame(Frame {
                    link: *link,
                    time: Duration::from_secs(u64::from(packet.ts_sec)) + frac,
                    data: packet.data,
                }))
            }
            Format::PcapNg { reader, last } => {
                // The packet is copied out of the block: the reader's borrow
                // must end before the next block is read (skipped blocks).
                let (link, time) = loop {
                    let (block, state) = match reader.next_block() {
                        None => return Ok(Next::End),
                        Some(Ok(found)) => found,
                        Some(Err(PcapNgReadError::Io(e)))
                            if e.kind() == std::io::ErrorKind::UnexpectedEof =>
                        {
                            return Ok(Next::Torn)
                        }
                        Some(Err(e)) => return Err(fail(ng_reason(&e))),
                    };
                    let big = state.endianness() == Endianness::Big;
                    let interfaces = state.interfaces();
                    let (interface, time, data) = match &block {
                        Block::EnhancedPacket(p) => (p.interface_id, p.timestamp, &p.data),
                        Block::Packet(p) => (u32::from(p.interface_id), p.timestamp, &p.data),
                        Block::SimplePacket(p) => (0, *last, &p.data),
                        _ => continue,
                    };
                    let Some(description) = interfaces.get(interface as usize) else {
                        return Err(fail(format!(
                            "a packet of interface {interface}, which the file does not describe"
                        )));
                    };
                    let link = Link::of(u32::from(description.linktype), big).ok_or_else(|| {
                        fail(format!(
                            "interface {interface}: {}",
                            unsupported(description.linktype)
                        ))
                    })?;
                    self.buffer.clear();
                    self.buffer.extend_from_slice(data);
                    break (link, time);
                };
                *last = time;
                self.packets += 1;
                Ok(Next::Frame(Frame {
                    link,
                    time,
                    data: Cow::Borrowed(&self.buffer),
                }))
            }
        }
    }
}

fn pcap_reason(e: &PcapReadError) -> String {
    crate::text::printable(&crate::text::one_line(e))
}

fn ng_reason(e: &PcapNgReadError) -> String {
    crate::text::printable(&crate::text::one_line(e))
}
