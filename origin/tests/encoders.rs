//! What producers' encoders send, end to end: a corpus made with ffmpeg's
//! lavfi sources (nothing large in the repository), each file pushed over
//! HTTP with the real `origin ingest` into the real `origin serve` (and the
//! OBS-like file also as OBS sends it: over RTMP from ffmpeg's FLV muxer,
//! and over SRT in real time, as an encoder does),
//! read back over HTTP and checked with ffprobe, independently of the
//! segmenter:
//!
//! - every frame of the driving stream from the first random access point
//!   on reaches a segment (packets in = packets out);
//! - every segment's first frame decodes on its own, as an I picture;
//! - one target duration, the one the GOP calls for, and every EXTINF
//!   rounded within it;
//! - every EXTINF within one frame of the media between segment starts.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::net::*;

/// Frames per second of every video in the corpus.
const FPS: f64 = 30.0;

struct Case {
    name: &'static str,
    /// The target duration the stream's GOP calls for.
    target: u64,
    /// The stream segments are cut on: `v:0`, or `a:0` for audio only.
    driving: &'static str,
}

const VIDEO: &str = "testsrc2=size=320x180:rate=30";
const AUDIO: &str = "sine=frequency=440:sample_rate=48000";

/// An H.264 clip of `secs` with extra encoder arguments.
fn h264(out: &Path, secs: &str, extra: &[&str]) {
    let mut args = vec![
        "-f", "lavfi", "-i", VIDEO, "-f", "lavfi", "-i", AUDIO, "-t", secs, "-c:v", "libx264",
        "-preset", "veryfast", "-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", "64k",
    ];
    args.extend_from_slice(extra);
    args.extend(["-f", "mpegts", out.to_str().expect("path")]);
    ffmpeg(&args);
}

fn hevc(out: &Path, params: &str) {
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        VIDEO,
        "-f",
        "lavfi",
        "-i",
        AUDIO,
        "-t",
        "20",
        "-c:v",
        "libx265",
        "-preset",
        "ultrafast",
        "-x265-params",
        params,
        "-c:a",
        "aac",
        "-f",
        "mpegts",
        out.to_str().expect("path"),
    ]);
}

/// Makes the corpus file for `name` in `dir`.
fn make(dir: &Path, name: &str) -> PathBuf {
    let out = dir.join(format!("{name}.ts"));
    let p = |f: &str| dir.join(f).to_str().expect("path").to_owned();
    match name {
        "bframes" => h264(&out, "20", &["-g", "60", "-bf", "3"]),
        "gop5" => h264(&out, "20", &["-g", "150", "-keyint_min", "150", "-sc_threshold", "0"]),
        "gop0.5" => h264(&out, "12", &["-g", "15"]),
        "open-gop" => h264(&out, "20", &["-g", "60", "-bf", "3", "-x264-params", "open-gop=1"]),
        // OBS with the keyframe interval on "auto": x264's keyint 250 (8.3 s
        // at 30 fps), 3 B-frames, keyframes at scene cuts (here at 5 s and
        // 17 s), so the first GOP is shorter than the longest.
        "obs-default" => ffmpeg(&[
            "-f", "lavfi", "-i", AUDIO, "-filter_complex",
            "testsrc2=s=320x180:r=30:d=5[a];smptebars=s=320x180:r=30:d=12[b];testsrc=s=320x180:r=30:d=13[c];[a][b][c]concat=n=3:v=1:a=0[v]",
            "-map", "[v]", "-map", "0:a", "-t", "30", "-c:v", "libx264", "-preset", "veryfast",
            "-pix_fmt", "yuv420p", "-g", "250", "-bf", "3", "-c:a", "aac", "-f", "mpegts",
            out.to_str().expect("path"),
        ]),
        "hevc-open" => hevc(&out, "log-level=error:keyint=60:open-gop=1"),
        "hevc-closed" => hevc(&out, "log-level=error:keyint=60:open-gop=0"),
        "audio-only" => ffmpeg(&[
            "-f", "lavfi", "-i", AUDIO, "-t", "12", "-c:a", "aac", "-f", "mpegts",
            out.to_str().expect("path"),
        ]),
        "mid-gop-start" => {
            h264(&dir.join("whole.ts"), "14", &["-g", "60", "-bf", "3"]);
            let whole = std::fs::read(dir.join("whole.ts")).expect("read");
            // Drop about the first 2.6 s of the 14 s, and 57 bytes more: the
            // file starts inside a packet, a PES and a GOP.
            let packets = whole.len() / 188;
            let skip = packets * 26 / 140 * 188 + 57;
            std::fs::write(&out, &whole[skip..]).expect("write");
        }
        "pts-wrap" => h264(&out, "20", &["-g", "60", "-bf", "3", "-output_ts_offset", "95436"]),
        "variable-frame-rate" => h264(
            &out,
            "16",
            &[
                "-g", "60", "-vf",
                "select='not(eq(mod(n\\,10)\\,3))*not(eq(mod(n\\,7)\\,5))'",
                "-fps_mode", "vfr",
            ],
        ),
        "resolution-change" => {
            h264(&dir.join("small.ts"), "8", &["-g", "60", "-bf", "3"]);
            ffmpeg(&[
                "-f", "lavfi", "-i", "testsrc2=size=480x270:rate=30", "-f", "lavfi", "-i", AUDIO,
                "-t", "8", "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p",
                "-g", "60", "-bf", "3", "-c:a", "aac", "-f", "mpegts", &p("large.ts"),
            ]);
            std::fs::write(
                dir.join("list.txt"),
                format!("file '{}'\nfile '{}'\n", p("small.ts"), p("large.ts")),
            )
            .expect("write");
            ffmpeg(&[
                "-f", "concat", "-safe", "0", "-i", &p("list.txt"), "-c", "copy", "-f", "mpegts",
                out.to_str().expect("path"),
            ]);
        }
        other => panic!("no corpus file {other}"),
    }
    out
}

#[derive(Debug, Clone)]
struct Packet {
    pts: Option<i64>,
    keyframe: bool,
}

/// What ffprobe lists of stream `sel` of `path`: `section` is `packets`
/// (decode order) or `frames` (what the decoder outputs), with `entries`.
fn ffprobe(path: &Path, sel: &str, section: &str, entries: &str) -> Vec<serde_json::Value> {
    let show = format!("-show_{section}");
    let entries = format!("{}={entries}", section.trim_end_matches('s'));
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", sel, "-of", "json", &show])
        .args(["-show_entries", &entries])
        .arg(path)
        .output()
        .expect("ffprobe runs");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ffprobe json");
    json[section].as_array().cloned().unwrap_or_default()
}

/// The packets of stream `sel` of `path`, in decode order.
fn packets(path: &Path, sel: &str) -> Vec<Packet> {
    ffprobe(path, sel, "packets", "pts,flags")
        .iter()
        .map(|p| Packet {
            pts: p["pts"].as_i64(),
            keyframe: p["flags"].as_str().is_some_and(|f| f.starts_with('K')),
        })
        .collect()
}

/// Picture types of the frames `path`'s first video stream decodes to, by PTS.
fn decoded_frames(path: &Path) -> Vec<(Option<i64>, String)> {
    ffprobe(path, "v:0", "frames", "pts,pict_type")
        .iter()
        .map(|f| {
            (
                f["pts"].as_i64(),
                f["pict_type"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

/// Ticks from `a` to `b` on the 33-bit PTS clock.
fn ticks_between(a: i64, b: i64) -> i64 {
    (b - a).rem_euclid(1 << 33)
}

/// How a file reaches the origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Push {
    /// `origin ingest FILE`: MPEG-TS over HTTP.
    Http,
    /// `ffmpeg -c copy -f flv rtmp://...`, with a publish key, as OBS does.
    Rtmp,
    /// `ffmpeg -re -c copy -f mpegts srt://...`, the publish key as the
    /// passphrase (SRT's live mode drops what comes faster than real time).
    Srt,
}

/// Pushes `file` to a fresh origin and checks what it serves; returns the
/// problems found and a line for the summary table.
async fn check(dir: &Path, case: &Case, file: &Path, push: Push) -> (Vec<String>, String) {
    let data = dir.join(format!("origin-{}-{push:?}", case.name));
    std::fs::create_dir_all(&data).expect("data dir");
    let config = data.join("origin.toml");
    std::fs::write(&config, "[segments]\nwindow_segments = 1000\n").expect("config");
    let config = config.to_str().expect("path");
    match push {
        Push::Http => {
            let (_origin, base) = spawn_origin(&data, &["--config", config]).await;
            let out = ingest_cmd(&base, "corpus", &[file.to_str().expect("path")]);
            assert!(
                out.status.success(),
                "{}: ingest failed: {}",
                case.name,
                String::from_utf8_lossy(&out.stderr)
            );
            read_back(&data, &base, case, file).await
        }
        Push::Rtmp => {
            let rtmp = format!("127.0.0.1:{}", free_port());
            let args = ["--config", config, "--rtmp", &rtmp, "--publish-key", "k3y"];
            let (_origin, base) = spawn_origin(&data, &args).await;
            let url = format!("rtmp://{rtmp}/live/corpus?key=k3y");
            ffmpeg(&[
                "-i",
                file.to_str().expect("path"),
                "-c",
                "copy",
                "-f",
                "flv",
                &url,
            ]);
            wait_until_published(&base, "corpus").await;
            read_back(&data, &base, case, file).await
        }
        Push::Srt => {
            let srt = format!("127.0.0.1:{}", free_udp_port());
            let key = "corpus-passphrase";
            let args = ["--config", config, "--srt", &srt, "--publish-key", key];
            let (_origin, base) = spawn_origin(&data, &args).await;
            // libsrt's live mode closes without linger: what ffmpeg had not
            // sent yet (the last 3 KB here) would never leave it. A second
            // of linger lets the caller finish sending, as a stopping
            // encoder should.
            let url = format!("srt://{srt}?streamid=corpus&passphrase={key}&pbkeylen=16&linger=1");
            let file = file.to_str().expect("path");
            ffmpeg(&["-re", "-i", file, "-c", "copy", "-f", "mpegts", &url]);
            wait_until_published(&base, "corpus").await;
            read_back(&data, &base, case, file.as_ref()).await
        }
    }
}

/// Reads what the origin at `base` published from `file` and checks it.
async fn read_back(data: &Path, base: &str, case: &Case, file: &Path) -> (Vec<String>, String) {
    let (_, playlist) = media_playlist(&format!("{base}/live/corpus/index.m3u8")).await;
    let mut problems = Vec::new();
    if playlist.target_duration != case.target {
        problems.push(format!(
            "target duration {} where the GOP calls for {}",
            playlist.target_duration, case.target
        ));
    }
    let mut all = Vec::new();
    let mut starts = Vec::new();
    for (n, seg) in playlist.segments.iter().enumerate() {
        let bytes = get(&format!("{base}/live/corpus/{}", seg.uri)).await.body;
        let path = data.join(&seg.uri);
        std::fs::write(&path, &bytes).expect("write segment");
        all.extend_from_slice(&bytes);
        let first = packets(&path, case.driving).first().cloned();
        let Some(first_pts) = first.and_then(|p| p.pts) else {
            problems.push(format!("segment {n} has no timed {} packet", case.driving));
            continue;
        };
        starts.push((first_pts, f64::from(seg.duration)));
        if (f64::from(seg.duration)).round() as u64 > playlist.target_duration {
            problems.push(format!(
                "segment {n}: EXTINF {} above the target",
                seg.duration
            ));
        }
        if case.driving == "v:0" {
            let frames = decoded_frames(&path);
            let first_frame = frames.iter().find(|f| f.0 == Some(first_pts));
            if first_frame.is_none_or(|f| f.1 != "I") {
                problems.push(format!(
                    "segment {n}: its first frame (pts {first_pts}) does not decode as an I picture on its own: {first_frame:?}"
                ));
            }
        }
    }
    for (n, pair) in starts.windows(2).enumerate() {
        let media = ticks_between(pair[0].0, pair[1].0) as f64 / 90_000.0;
        let frame = if case.driving == "v:0" {
            1.0 / FPS
        } else {
            0.03
        };
        if (pair[0].1 - media).abs() > frame + 0.001 {
            problems.push(format!(
                "segment {n}: EXTINF {:.3} s but {media:.3} s of media to the next segment",
                pair[0].1
            ));
        }
    }
    let joined = data.join("all.ts");
    std::fs::write(&joined, &all).expect("write");
    let input = packets(file, case.driving);
    let from_rap = input.iter().position(|p| p.keyframe).unwrap_or(0);
    let frames_in = input.len() - from_rap;
    let frames_out = packets(&joined, case.driving).len();
    if frames_in != frames_out {
        problems.push(format!(
            "{frames_in} frames from the first random access point on, {frames_out} in segments"
        ));
    }
    let line = format!(
        "{:<20} target {:>2} s  segments {:>3}  frames in {:>4} out {:>4}  problems {}",
        case.name,
        playlist.target_duration,
        playlist.segments.len(),
        frames_in,
        frames_out,
        problems.len()
    );
    (problems, line)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_encoders_output_is_segmented_without_losing_a_frame() {
    require_tool("ffmpeg");
    require_tool("ffprobe");
    let dir = tempfile::tempdir().expect("tempdir");
    let cases = [
        Case {
            name: "bframes",
            target: 3,
            driving: "v:0",
        },
        Case {
            name: "gop5",
            target: 6,
            driving: "v:0",
        },
        Case {
            name: "gop0.5",
            target: 3,
            driving: "v:0",
        },
        Case {
            name: "open-gop",
            target: 3,
            driving: "v:0",
        },
        Case {
            name: "obs-default",
            target: 9,
            driving: "v:0",
        },
        Case {
            name: "hevc-open",
            target: 3,
            driving: "v:0",
        },
        Case {
            name: "hevc-closed",
            target: 3,
            driving: "v:0",
        },
        Case {
            name: "audio-only",
            target: 3,
            driving: "a:0",
        },
        Case {
            name: "mid-gop-start",
            target: 3,
            driving: "v:0",
        },
        Case {
            name: "pts-wrap",
            target: 3,
            driving: "v:0",
        },
        // 60 frames with about a quarter dropped: GOPs of about 2.6 s.
        Case {
            name: "variable-frame-rate",
            target: 4,
            driving: "v:0",
        },
        Case {
            name: "resolution-change",
            target: 3,
            driving: "v:0",
        },
    ];
    let mut failures = Vec::new();
    for case in &cases {
        let file = make(dir.path(), case.name);
        let pushes: &[Push] = if case.name == "obs-default" {
            &[Push::Http, Push::Rtmp, Push::Srt]
        } else {
            &[Push::Http]
        };
        for &push in pushes {
            let (problems, line) = check(dir.path(), case, &file, push).await;
            println!("{push:<5?} {line}");
            for p in problems {
                failures.push(format!("{} over {push:?}: {p}", case.name));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
