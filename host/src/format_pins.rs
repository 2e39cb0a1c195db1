//! Golden bytes of every wire message and every persisted record (issue 11).
//!
//! postcard encodes fields by position, with no names and no tolerance: a
//! field added to `Limits`, `JobRequest` or `AttemptRecord` changes the wire
//! protocol and the redb format at once, and `#[serde(default)]` does not
//! help. Each type here has one fully populated sample whose bytes are
//! pinned together with the version they were pinned at. When the bytes
//! change, the failure says what to do: raise `transport::PROTOCOL_VERSION`
//! (wire) or `store::FORMAT_VERSION` (redb) if it was not raised yet, then
//! pin the new bytes it prints.

use crate::model::{
    AttemptEpoch, AttemptFailure, AttemptReport, AttemptStats, Capability, Compression, DeadLetter,
    InputSplit, JobId, Limits, ModuleHash, OutputDigest, OutputFormat, Partitioner, Peer, Shuffle,
    ShuffleSettings, TaskId, TaskInput, TenantId, WorkerId,
};
use crate::placement::{LabelRequirement, Placement};
use crate::scheduler::{AttemptOutcome, AttemptRecord, JobOutcome, Phase};
use crate::store::{FORMAT_VERSION, JobRecord};
use crate::summary::{JobSummary, PhaseChange};
use crate::transport::PROTOCOL_VERSION;
use crate::wire::{
    ClientReply, ClientRequest, FromWorker, HeldOutput, JobRequest, ModuleReply, Open,
    PartitionReply, StatusReport, ToWorker, Totals, WorkerInfo,
};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;

fn job() -> JobId {
    JobId(uuid::Uuid::from_u128(
        0x0123_4567_89ab_cdef_0011_2233_4455_6677,
    ))
}

fn limits() -> Limits {
    Limits {
        fuel: 1,
        memory_bytes: 2,
        timeout_ms: 3,
        output_bytes: 4,
        log_bytes: 5,
        max_dead_letters: 6,
        job_output_bytes: 7,
        clock: true,
    }
}

fn params() -> BTreeMap<String, String> {
    [("k".to_string(), "v".to_string())].into()
}

fn stats() -> AttemptStats {
    AttemptStats {
        bytes_in: 1,
        bytes_out: 2,
        records_out: 3,
        fuel_used: 4,
        wall_ms: 5,
        counters: [("c".to_string(), -1)].into(),
        dead_letters: vec![DeadLetter {
            file: "f".into(),
            offset: 9,
            record: "r".into(),
            message: "m".into(),
        }],
        output_digest: Some(OutputDigest {
            bytes: 10,
            crc32c: 11,
        }),
    }
}

fn record() -> AttemptRecord {
    AttemptRecord {
        task: TaskId::Reduce(1),
        epoch: AttemptEpoch(2),
        worker: WorkerId(3),
        started_ms: 4,
        ended_ms: Some(5),
        outcome: AttemptOutcome::Failed(AttemptFailure::FetchFailed {
            map_task: TaskId::Map(6),
            map_epoch: AttemptEpoch(7),
            worker: WorkerId(8),
            reason: "x".into(),
        }),
        stats: Some(stats()),
        speculative: true,
    }
}

fn request() -> JobRequest {
    JobRequest {
        map_module: vec![1, 2],
        reduce_module: Some(vec![3]),
        inputs: vec!["in".into()],
        output: PathBuf::from("out"),
        output_format: OutputFormat::Jsonl,
        reducers: 2,
        split_bytes: 3,
        limits: limits(),
        params: params(),
        max_attempts: 4,
        shuffle_settings: shuffle_settings(),
        placement: Placement {
            require: vec![
                LabelRequirement::Equals {
                    key: "k".into(),
                    value: "v".into(),
                },
                LabelRequirement::NotEquals {
                    key: "n".into(),
                    value: "w".into(),
                },
                LabelRequirement::Present { key: "p".into() },
            ],
            timeout_ms: 5,
        },
        speculate: true,
    }
}

fn summary() -> JobSummary {
    JobSummary {
        job: "j".into(),
        outcome: JobOutcome::Failed("why".into()),
        tasks: 1,
        attempts: 2,
        failed_attempts: 3,
        bytes_in: 4,
        bytes_out: 5,
        records_out: 6,
        fuel_used: 7,
        wall_ms: 8,
        counters: [("c".to_string(), 9)].into(),
        dead_letters: stats().dead_letters,
        attempt_log: vec![record()],
        speculative: 10,
        speculative_won: 11,
    }
}

fn phase_change() -> PhaseChange {
    PhaseChange {
        phase: Phase::Reducing,
        unix_ms: 1,
        reason: "r".into(),
    }
}

fn shuffle_settings() -> ShuffleSettings {
    ShuffleSettings {
        sort_buffer_bytes: 1 << 20,
        compression: Compression::None,
        partitioner: Partitioner::Range {
            boundaries: vec![b"m".to_vec()],
        },
    }
}

fn hex<T: Serialize>(value: &T) -> String {
    let bytes = postcard::to_stdvec(value).expect("samples serialize");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Check each `(name, sample bytes)` against its pin `(name, version, hex)`.
fn check(
    kind: &str,
    constant: &str,
    current: u64,
    got: &[(&str, String)],
    pins: &[(&str, u64, &str)],
) {
    let mut problems = Vec::new();
    for (name, bytes) in got {
        let Some(&(_, pinned_at, pinned)) = pins.iter().find(|p| p.0 == *name) else {
            problems.push(format!(
                "{name}: not pinned; pin (\"{name}\", {current}, \"{bytes}\")"
            ));
            continue;
        };
        match (bytes == pinned, pinned_at == current) {
            (true, true) => {}
            (false, true) => problems.push(format!(
                "{name}: its {kind} encoding changed but {constant} is still {current}: raise \
                 {constant}, then pin (\"{name}\", {}, \"{bytes}\")",
                current + 1
            )),
            (false, false) => problems.push(format!(
                "{name}: {constant} is {current}; pin (\"{name}\", {current}, \"{bytes}\")"
            )),
            (true, false) => problems.push(format!(
                "{name}: {constant} was raised to {current} but {name} did not change: pin \
                 (\"{name}\", {current}, \"{bytes}\")"
            )),
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Every message on the wire, with its nested types populated.
#[test]
fn wire_messages_are_pinned_to_the_protocol_version() {
    let assignment = crate::model::Assignment {
        tenant: TenantId("t".into()),
        job: job(),
        task: TaskId::Map(1),
        epoch: AttemptEpoch(2),
        module: ModuleHash("h".into()),
        input: TaskInput::Map(InputSplit {
            path: PathBuf::from("p"),
            offset: 3,
            len: 4,
        }),
        reducers: 5,
        limits: limits(),
        params: params(),
        output: PathBuf::from("o"),
        output_format: OutputFormat::Jsonl,
        shuffle_settings: shuffle_settings(),
        work_root: PathBuf::from("w"),
        shuffle: Shuffle::WorkerLocal,
        peers: [(
            WorkerId(6),
            Peer {
                addr: "127.0.0.1:7".parse().unwrap(),
                fingerprint: "f".into(),
            },
        )]
        .into(),
        capability: Capability("c".into()),
    };
    let reduce_input = TaskInput::Reduce {
        partition: 1,
        map_outputs: vec![(TaskId::Map(2), AttemptEpoch(3), WorkerId(4))],
    };
    let report = AttemptReport {
        job: job(),
        task: TaskId::Map(1),
        epoch: AttemptEpoch(2),
        worker: WorkerId(3),
        outcome: Ok(stats()),
        log: "l".into(),
    };
    let status = StatusReport {
        job: "j".into(),
        phase: Phase::Mapping,
        outcome: Some(JobOutcome::Completed),
        tasks: 1,
        committed: 2,
        running: 3,
        pending: 4,
        waiting: Some("w".into()),
        attempt_log: vec![record()],
        workers: vec![WorkerInfo {
            id: WorkerId(5),
            name: "n".into(),
            slots: 6,
            connected: true,
            labels: params(),
            pool: Some(TenantId("t".into())),
        }],
        transitions: vec![phase_change()],
        totals: [("job".to_string(), Totals::default())].into(),
    };
    let got = [
        (
            "Open::Worker",
            hex(&Open::Worker {
                name: "n".into(),
                slots: 1,
                labels: params(),
                shuffle: Some(Peer {
                    addr: "[::1]:2".parse().unwrap(),
                    fingerprint: "f".into(),
                }),
                token: "t".into(),
                identity: "i".into(),
            }),
        ),
        (
            "Open::FetchPartition",
            hex(&Open::FetchPartition {
                job: job(),
                task: TaskId::Map(1),
                epoch: AttemptEpoch(2),
                partition: 3,
                capability: Capability("c".into()),
            }),
        ),
        (
            "Open::Client(Submit)",
            hex(&Open::Client {
                tenant: TenantId("t".into()),
                token: "s".into(),
                request: ClientRequest::Submit(Box::new(request())),
            }),
        ),
        (
            "ToWorker::Welcome",
            hex(&ToWorker::Welcome {
                worker: WorkerId(1),
                heartbeat_ms: 2,
                pool: Some(TenantId("t".into())),
            }),
        ),
        (
            "ToWorker::Assign",
            hex(&ToWorker::Assign(Box::new(assignment))),
        ),
        ("TaskInput::Reduce", hex(&reduce_input)),
        ("Shuffle::Object", hex(&Shuffle::Object("s3://b/p".into()))),
        ("FromWorker::Finished", hex(&FromWorker::Finished(report))),
        (
            "AttemptFailure::JobOutputLimit",
            hex(&AttemptFailure::JobOutputLimit { limit: 1, total: 2 }),
        ),
        (
            "ClientReply::Done",
            hex(&ClientReply::Done(Box::new(summary()))),
        ),
        (
            "ClientReply::Status",
            hex(&ClientReply::Status(Box::new(status))),
        ),
        (
            "PartitionReply::Chunk",
            hex(&PartitionReply::Chunk(vec![1])),
        ),
        (
            "PartitionReply::End",
            hex(&PartitionReply::End { bytes: 300 }),
        ),
        (
            "ModuleReply::Refused",
            hex(&ModuleReply::Refused("r".into())),
        ),
        (
            "FromWorker::Announce",
            hex(&FromWorker::Announce(vec![HeldOutput {
                job: job(),
                task: TaskId::Map(1),
                epoch: AttemptEpoch(2),
                digest: OutputDigest {
                    bytes: 3,
                    crc32c: 4,
                },
            }])),
        ),
        (
            "ToWorker::Release",
            hex(&ToWorker::Release {
                job: job(),
                task: TaskId::Map(1),
                epoch: AttemptEpoch(2),
            }),
        ),
    ];
    check(
        "wire",
        "transport::PROTOCOL_VERSION",
        u64::from(PROTOCOL_VERSION),
        &got,
        WIRE_PINS,
    );
}

/// Every record the coordinator persists in redb.
#[test]
fn persisted_records_are_pinned_to_the_store_format_version() {
    let job_record = JobRecord {
        id: job(),
        tenant: TenantId("t".into()),
        request: request(),
        map_module: ModuleHash("m".into()),
        reduce_module: ModuleHash("r".into()),
        splits: vec![InputSplit {
            path: PathBuf::from("p"),
            offset: 1,
            len: 2,
        }],
        transitions: vec![phase_change()],
        outcome: Some(JobOutcome::Cancelled),
        summary: Some(summary()),
    };
    let got = [
        ("JobRecord", hex(&job_record)),
        ("AttemptRecord", hex(&record())),
    ];
    check(
        "storage",
        "store::FORMAT_VERSION",
        FORMAT_VERSION,
        &got,
        STORE_PINS,
    );
}

/// `(message, protocol version pinned at, postcard bytes in hex)`.
const WIRE_PINS: &[(&str, u64, &str)] = &[
    ("ToWorker::Welcome", 7, "000102010174"),
    ("PartitionReply::End", 7, "01ac02"),
    ("PartitionReply::Chunk", 7, "000101"),
    (
        "Open::Worker",
        7,
        "00016e0101016b017601010000000000000000000000000000000102016601740169",
    ),
    (
        "Open::FetchPartition",
        7,
        "01100123456789abcdef0011223344556677000102030163",
    ),
    (
        "Open::Client(Submit)",
        7,
        "0301740173000201020101030102696e036f7574010203010203040506070101016b017604808040000101016d0300016b017601016e01770201700501",
    ),
    (
        "ToWorker::Assign",
        7,
        "020174100123456789abcdef00112233445566770001020168000170030405010203040506070101016b0176016f01808040000101016d0177010106007f0000010701660163",
    ),
    ("TaskInput::Reduce", 7, "01010100020304"),
    ("Shuffle::Object", 7, "020873333a2f2f622f70"),
    (
        "FromWorker::Finished",
        7,
        "01100123456789abcdef00112233445566770001020300010203040501016301010166090172016d010a0b016c",
    ),
    ("AttemptFailure::JobOutputLimit", 7, "060102"),
    (
        "ClientReply::Done",
        7,
        "02016a0103776879010203040506070801016312010166090172016d0101010203040105020900060708017801010203040501016301010166090172016d010a0b010a0b",
    ),
    (
        "ClientReply::Status",
        7,
        "03016a010100010203040101770101010203040105020900060708017801010203040501016301010166090172016d010a0b010105016e060101016b0176010174010201017201036a6f620000000000000000",
    ),
    ("ModuleReply::Refused", 7, "020172"),
    (
        "FromWorker::Announce",
        7,
        "0401100123456789abcdef00112233445566770001020304",
    ),
    (
        "ToWorker::Release",
        7,
        "08100123456789abcdef0011223344556677000102",
    ),
];

/// `(record, store format version pinned at, postcard bytes in hex)`.
const STORE_PINS: &[(&str, u64, &str)] = &[
    (
        "JobRecord",
        7,
        "100123456789abcdef001122334455667701740201020101030102696e036f7574010203010203040506070101016b017604808040000101016d0300016b017601016e01770201700501016d017201017001020102010172010201016a0103776879010203040506070801016312010166090172016d0101010203040105020900060708017801010203040501016301010166090172016d010a0b010a0b",
    ),
    (
        "AttemptRecord",
        7,
        "01010203040105020900060708017801010203040501016301010166090172016d010a0b01",
    ),
];
