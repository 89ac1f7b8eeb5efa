//! Writes made in groups (group commit) against a real database, checked against a model of
//! each write on its own.
//!
//! Reports: whatever reports share a group — redeliveries, reports of ended categories, of
//! another device's or another organization's job, older than what is stored — the group
//! applies exactly what they would one by one, and never moves a category to `reported` from a
//! state it may not be reached from.
//!
//! Transitions: a group of guarded category moves, some of the same job, applies each one
//! exactly when its categories were all in a state it may come from, whether the server takes
//! the group as one `bulkWrite` or one statement at a time.

use bson::{DateTime, Document, doc, oid::ObjectId};
use proptest::prelude::*;
use refresh_shared::{
    Category,
    job::{CategoryState, Lane},
    report::{CategoryReport, DeviceReport, REPORT_MESSAGE_VERSION, ReportSource},
    settings::MongoSettings,
    store::{CategoryUpdate, DEVICES, JobRecord, ReportApplied, Store, Transition},
};
use secrecy::SecretString;
use std::{collections::BTreeMap, time::Duration};
use time::OffsetDateTime;

/// The categories cases draw from: few, so that reports and jobs meet often.
const CATEGORIES: [Category; 3] = [Category::Hardware, Category::Applications, Category::Os];
/// Devices of the case's organization; one more belongs to another organization.
const DEVICES_IN_ORGANIZATION: usize = 2;

#[derive(Debug, Clone)]
struct JobSpec {
    device: usize,
    /// Each of the job's categories, its state, and whether the job holds the device's claim.
    categories: Vec<(Category, CategoryState, bool)>,
}

/// Which job a report names.
#[derive(Debug, Clone, Copy)]
enum Names {
    Nothing,
    Job(usize),
    /// A job id that exists nowhere.
    Unknown,
}

#[derive(Debug, Clone)]
struct ReportSpec {
    /// `DEVICES_IN_ORGANIZATION` is the other organization's device, reported by it.
    device: usize,
    names: Names,
    categories: Vec<Category>,
    /// Seconds past the case's start; distinct per report, odd (stored inventory is even).
    collected: i64,
    source: ReportSource,
}

#[derive(Debug, Clone)]
struct Case {
    jobs: Vec<JobSpec>,
    /// Inventory stored before: device, category, seconds past the case's start.
    stored: Vec<(usize, Category, i64)>,
    reports: Vec<ReportSpec>,
}

fn any_state() -> impl Strategy<Value = CategoryState> {
    prop::sample::select(vec![
        CategoryState::Queued,
        CategoryState::Pushing,
        CategoryState::Pushed,
        CategoryState::Retrying,
        CategoryState::Reported,
        CategoryState::Failed,
        CategoryState::Expired,
        CategoryState::Unreported,
        CategoryState::Canceled,
    ])
}

fn some_categories() -> impl Strategy<Value = Vec<Category>> {
    prop::sample::subsequence(CATEGORIES.to_vec(), 1..=CATEGORIES.len())
}

fn any_case() -> impl Strategy<Value = Case> {
    let job = (
        0..DEVICES_IN_ORGANIZATION,
        some_categories(),
        prop::collection::vec((any_state(), any::<bool>()), CATEGORIES.len()),
    )
        .prop_map(|(device, categories, states)| JobSpec {
            device,
            categories: categories
                .into_iter()
                .zip(states)
                .map(|(category, (state, holds))| (category, state, holds))
                .collect(),
        });
    let jobs = prop::collection::vec(job, 1..4);
    let stored = prop::collection::vec(
        (
            0..=DEVICES_IN_ORGANIZATION,
            prop::sample::select(CATEGORIES.to_vec()),
            (0_i64..8).prop_map(|k| 2 * k),
        ),
        0..4,
    );
    (jobs, stored, 1_usize..9).prop_flat_map(|(jobs, stored, count)| {
        let job_count = jobs.len();
        let names = prop_oneof![
            1 => Just(Names::Nothing),
            1 => Just(Names::Unknown),
            6 => (0..job_count).prop_map(Names::Job),
        ];
        let report = (
            0..=DEVICES_IN_ORGANIZATION,
            names,
            some_categories(),
            prop::sample::select(vec![ReportSource::Agent, ReportSource::Omadm]),
            any::<bool>(),
        );
        let order = Just((0..count).collect::<Vec<usize>>()).prop_shuffle();
        (
            prop::collection::vec(report, count),
            order,
            Just(jobs),
            Just(stored),
        )
            .prop_map(|(specs, order, jobs, stored)| {
                let reports = specs
                    .into_iter()
                    .zip(order)
                    .map(|((device, names, categories, source, own_device), k)| {
                        // Mostly the named job's own device, sometimes any.
                        let device = match names {
                            Names::Job(job) if own_device => jobs[job].device,
                            _ => device,
                        };
                        ReportSpec {
                            device,
                            names,
                            categories,
                            collected: 2 * i64::try_from(k).unwrap_or(0) + 1,
                            source,
                        }
                    })
                    .collect();
                Case {
                    jobs,
                    stored,
                    reports,
                }
            })
    })
}

/// The case's ids: the same in every database the case is written to.
struct Ids {
    organization: ObjectId,
    other_organization: ObjectId,
    /// The organization's devices, then the other organization's.
    devices: Vec<ObjectId>,
    jobs: Vec<ObjectId>,
    start: OffsetDateTime,
}

impl Ids {
    fn new(case: &Case) -> Ids {
        Ids {
            organization: ObjectId::new(),
            other_organization: ObjectId::new(),
            devices: (0..=DEVICES_IN_ORGANIZATION)
                .map(|_| ObjectId::new())
                .collect(),
            jobs: case.jobs.iter().map(|_| ObjectId::new()).collect(),
            start: OffsetDateTime::now_utc().replace_millisecond(0).unwrap(),
        }
    }

    fn organization_of(&self, device: usize) -> ObjectId {
        if device < DEVICES_IN_ORGANIZATION {
            self.organization
        } else {
            self.other_organization
        }
    }

    fn at(&self, seconds: i64) -> OffsetDateTime {
        self.start + time::Duration::seconds(seconds)
    }

    fn report(&self, spec: &ReportSpec) -> DeviceReport {
        let job_id = match spec.names {
            Names::Nothing => None,
            Names::Job(job) => Some(self.jobs[job]),
            Names::Unknown => Some(ObjectId::new()),
        };
        let categories = spec
            .categories
            .iter()
            .map(|&category| {
                let nodes = [(
                    format!("./Vendor/{category}"),
                    format!("collected at {}", spec.collected),
                )];
                let report = CategoryReport {
                    nodes: nodes.into_iter().collect(),
                    errors: BTreeMap::new(),
                };
                (category, report)
            })
            .collect();
        DeviceReport {
            version: REPORT_MESSAGE_VERSION,
            organization_id: self.organization_of(spec.device),
            device_id: self.devices[spec.device],
            job_id,
            collected_at: self.at(spec.collected),
            received_at: OffsetDateTime::now_utc(),
            source: spec.source,
            categories,
        }
    }
}

/// A job's categories as reports change them: state, report source, whether a report time is
/// recorded.
type JobSeen = BTreeMap<Category, (CategoryState, Option<ReportSource>, bool)>;

/// What the case's data is, as far as reports change it.
#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    jobs: Vec<JobSeen>,
    /// Per device: the categories still outstanding, those with a refresh time.
    devices: Vec<(Vec<String>, Vec<String>)>,
    /// Per device and category: when the stored inventory was collected, and what it says.
    inventory: BTreeMap<(usize, Category), (DateTime, String)>,
}

/// What each report's application answered: its job (by index), the categories it reported.
type Answers = Vec<(Option<usize>, Vec<Category>)>;

async fn write_case(store: &Store, case: &Case, ids: &Ids) {
    for (index, spec) in case.jobs.iter().enumerate() {
        let categories: Vec<Category> = spec.categories.iter().map(|c| c.0).collect();
        let mut job = JobRecord::new(
            ids.organization,
            ids.devices[spec.device],
            &categories,
            Lane::Interactive,
        );
        job.id = ids.jobs[index];
        for &(category, state, _) in &spec.categories {
            let record = job.categories.get_mut(&category).unwrap();
            record.state = state;
        }
        store.insert_job(&job).await.unwrap();
    }
    let devices = store.database().collection::<Document>(DEVICES);
    for (index, &device) in ids.devices.iter().enumerate() {
        // The last job to claim a category holds it.
        let mut holders = Document::new();
        let mut outstanding = Vec::new();
        for (job, spec) in case.jobs.iter().enumerate() {
            for &(category, _, holds) in &spec.categories {
                if spec.device == index && holds {
                    holders.insert(category.as_str(), ids.jobs[job]);
                    if !outstanding.contains(&category.as_str()) {
                        outstanding.push(category.as_str());
                    }
                }
            }
        }
        let device = doc! {
            "_id": device,
            "organization": ids.organization_of(index),
            "lastRefreshJob": holders,
            "refreshInfoNeeded": outstanding,
        };
        devices.insert_one(device).await.unwrap();
    }
    // Stored inventory: a report of its own, applied.
    for &(device, category, seconds) in &case.stored {
        let spec = ReportSpec {
            device,
            names: Names::Nothing,
            categories: vec![category],
            collected: seconds,
            source: ReportSource::Agent,
        };
        let applied = store.apply_reports(&[ids.report(&spec)]).await.unwrap();
        assert!(applied[0].is_ok());
    }
}

async fn snapshot(store: &Store, ids: &Ids) -> Snapshot {
    let mut jobs = Vec::new();
    for &id in &ids.jobs {
        let job = store.job_by_id(id).await.unwrap().unwrap();
        jobs.push(
            job.categories
                .iter()
                .map(|(&category, record)| {
                    let seen = (
                        record.state,
                        record.report_source,
                        record.reported_at.is_some(),
                    );
                    (category, seen)
                })
                .collect(),
        );
    }
    let raw = store.database().collection::<Document>(DEVICES);
    let mut devices = Vec::new();
    for &id in &ids.devices {
        let device = raw.find_one(doc! { "_id": id }).await.unwrap().unwrap();
        let mut outstanding: Vec<String> = device
            .get_array("refreshInfoNeeded")
            .unwrap()
            .iter()
            .map(|category| category.as_str().unwrap().to_owned())
            .collect();
        outstanding.sort();
        let mut refreshed: Vec<String> = device
            .get_document("infoRefreshedAt")
            .map(|at| at.keys().cloned().collect())
            .unwrap_or_default();
        refreshed.sort();
        devices.push((outstanding, refreshed));
    }
    let mut inventory = BTreeMap::new();
    for (index, &device) in ids.devices.iter().enumerate() {
        let organization = ids.organization_of(index);
        for record in store.inventory(organization, device, &[]).await.unwrap() {
            let value = record.nodes.first().map(|node| node.value.clone());
            inventory.insert(
                (index, record.category),
                (record.collected_at, value.unwrap_or_default()),
            );
        }
    }
    Snapshot {
        jobs,
        devices,
        inventory,
    }
}

/// What applying the case's reports one after another must leave, and answer.
fn model(case: &Case, ids: &Ids) -> (Snapshot, Answers) {
    let mut jobs: Vec<JobSeen> = case
        .jobs
        .iter()
        .map(|spec| {
            spec.categories
                .iter()
                .map(|&(category, state, _)| (category, (state, None, false)))
                .collect()
        })
        .collect();
    let mut holders: Vec<BTreeMap<Category, usize>> = vec![BTreeMap::new(); ids.devices.len()];
    for (job, spec) in case.jobs.iter().enumerate() {
        for &(category, _, holds) in &spec.categories {
            if holds {
                holders[spec.device].insert(category, job);
            }
        }
    }
    let mut outstanding: Vec<Vec<Category>> = holders
        .iter()
        .map(|held| held.keys().copied().collect())
        .collect();
    let mut refreshed: Vec<Vec<Category>> = vec![Vec::new(); ids.devices.len()];
    let mut inventory = BTreeMap::new();
    let mut store_inventory = |device: usize, category: Category, seconds: i64| {
        let at = DateTime::from_millis(ids.at(seconds).unix_timestamp() * 1000);
        let value = format!("collected at {seconds}");
        let newer = inventory
            .get(&(device, category))
            .is_none_or(|(stored, _): &(DateTime, String)| *stored < at);
        if newer {
            inventory.insert((device, category), (at, value));
        }
    };
    for &(device, category, seconds) in &case.stored {
        store_inventory(device, category, seconds);
    }
    let mut answers = Vec::new();
    for report in &case.reports {
        for &category in &report.categories {
            store_inventory(report.device, category, report.collected);
        }
        let Names::Job(job) = report.names else {
            answers.push((None, Vec::new()));
            continue;
        };
        // A report names its job from its own organization: another's names nothing there.
        let in_organization = report.device < DEVICES_IN_ORGANIZATION;
        let mut reported = Vec::new();
        for &category in &report.categories {
            if in_organization && holders[report.device].get(&category) == Some(&job) {
                outstanding[report.device].retain(|&c| c != category);
                if !refreshed[report.device].contains(&category) {
                    refreshed[report.device].push(category);
                }
            }
            if !in_organization || report.device != case.jobs[job].device {
                continue;
            }
            if let Some(entry) = jobs[job].get_mut(&category)
                && CategoryState::Reported.allowed_sources().contains(&entry.0)
            {
                *entry = (CategoryState::Reported, Some(report.source), true);
                reported.push(category);
            }
        }
        let found = in_organization && report.device == case.jobs[job].device;
        answers.push((found.then_some(job), reported));
    }
    let names = |categories: &Vec<Category>| {
        let mut names: Vec<String> = categories.iter().map(|c| c.as_str().to_owned()).collect();
        names.sort();
        names
    };
    let devices = outstanding
        .iter()
        .zip(&refreshed)
        .map(|(outstanding, refreshed)| (names(outstanding), names(refreshed)))
        .collect();
    let snapshot = Snapshot {
        jobs,
        devices,
        inventory,
    };
    (snapshot, answers)
}

fn answers_of(
    applied: Vec<Result<ReportApplied, refresh_shared::store::StoreError>>,
    ids: &Ids,
) -> Answers {
    applied
        .into_iter()
        .map(|applied| {
            let applied = applied.expect("every report applies");
            let job = applied
                .job
                .map(|job| ids.jobs.iter().position(|&id| id == job.id).unwrap());
            let mut reported = applied.reported;
            reported.sort();
            (job, reported)
        })
        .collect()
}

async fn open(name: &str) -> Store {
    let uri = std::env::var("MONGODB_URI")
        .unwrap_or_else(|_| "mongodb://127.0.0.1:27017/?directConnection=true".to_owned());
    let settings = MongoSettings {
        uri: SecretString::from(uri),
        database: format!("group_writes_{name}_{}", ObjectId::new().to_hex()),
        server_timeout: Duration::from_secs(5),
    };
    Store::open(&settings, "group-writes-test").await.unwrap()
}

#[test]
fn a_group_of_reports_applies_exactly_what_they_would_one_by_one() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (grouped, single) =
        runtime.block_on(async { (open("grouped").await, open("single").await) });
    let config = ProptestConfig {
        cases: 48,
        ..ProptestConfig::default()
    };
    proptest!(config, |(case in any_case())| {
        runtime.block_on(async {
            let ids = Ids::new(&case);
            let reports: Vec<DeviceReport> = case.reports.iter().map(|spec| ids.report(spec)).collect();
            let (expected, expected_answers) = model(&case, &ids);

            write_case(&grouped, &case, &ids).await;
            let answers = answers_of(grouped.apply_reports(&reports).await.unwrap(), &ids);
            let mut expected_sorted = expected_answers.clone();
            for (_, reported) in &mut expected_sorted {
                reported.sort();
            }
            assert_eq!(answers, expected_sorted, "the group's answers");
            assert_eq!(snapshot(&grouped, &ids).await, expected, "after the group");
            // The same group again (a redelivery): nothing changes, nothing is reported anew.
            let again = answers_of(grouped.apply_reports(&reports).await.unwrap(), &ids);
            assert!(again.iter().all(|(_, reported)| reported.is_empty()), "{again:?}");
            assert_eq!(snapshot(&grouped, &ids).await, expected, "after the group again");

            write_case(&single, &case, &ids).await;
            for report in &reports {
                single.apply_reports(std::slice::from_ref(report)).await.unwrap();
            }
            assert_eq!(snapshot(&single, &ids).await, expected, "one by one");
        });
    });
    runtime.block_on(async {
        grouped.database().drop().await.unwrap();
        single.database().drop().await.unwrap();
    });
}

/// A case of transitions: jobs (each category's state) and moves of them, in order.
#[derive(Debug, Clone)]
struct Moves {
    jobs: Vec<Vec<(Category, CategoryState)>>,
    /// Job (an index past the jobs: one that does not exist), categories, target, sources.
    moves: Vec<(usize, Vec<Category>, CategoryState, Vec<CategoryState>)>,
}

/// The moves the worker makes, each from the states it is made from.
fn any_move() -> impl Strategy<Value = (CategoryState, Vec<CategoryState>)> {
    use CategoryState::*;
    let target = prop::sample::select(vec![Pushing, Pushed, Retrying, Failed, Expired, Unreported]);
    (target, any::<bool>()).prop_map(|(to, claim)| {
        // A claim comes from the claimable states, everything else from its allowed sources.
        let from = if to == Pushing && claim {
            CategoryState::claimable(true).to_vec()
        } else {
            to.allowed_sources().to_vec()
        };
        (to, from)
    })
}

fn any_moves() -> impl Strategy<Value = Moves> {
    let job = prop::collection::vec(any_state(), CATEGORIES.len()).prop_flat_map(|states| {
        some_categories().prop_map(move |categories| {
            categories
                .into_iter()
                .zip(states.clone())
                .collect::<Vec<_>>()
        })
    });
    prop::collection::vec(job, 1..4).prop_flat_map(|jobs| {
        let count = jobs.len();
        let one = (0..=count, some_categories(), any_move())
            .prop_map(|(job, categories, (to, from))| (job, categories, to, from));
        prop::collection::vec(one, 1..12).prop_map(move |moves| Moves {
            jobs: jobs.clone(),
            moves,
        })
    })
}

/// What the moves must answer and leave, one after another.
fn model_moves(case: &Moves) -> (Vec<bool>, Vec<BTreeMap<Category, CategoryState>>) {
    let mut jobs: Vec<BTreeMap<Category, CategoryState>> = case
        .jobs
        .iter()
        .map(|categories| categories.iter().copied().collect())
        .collect();
    let applied = case
        .moves
        .iter()
        .map(|(job, categories, to, from)| {
            let Some(states) = jobs.get_mut(*job) else {
                return false;
            };
            let allowed = categories.iter().all(|category| {
                states
                    .get(category)
                    .is_some_and(|state| from.contains(state))
            });
            if allowed {
                for category in categories {
                    states.insert(*category, *to);
                }
            }
            allowed
        })
        .collect();
    (applied, jobs)
}

async fn apply_moves(
    store: &Store,
    case: &Moves,
) -> (Vec<bool>, Vec<BTreeMap<Category, CategoryState>>) {
    let organization = ObjectId::new();
    let mut ids = Vec::new();
    for categories in &case.jobs {
        let names: Vec<Category> = categories.iter().map(|c| c.0).collect();
        let mut job = JobRecord::new(organization, ObjectId::new(), &names, Lane::Interactive);
        for &(category, state) in categories {
            job.categories.get_mut(&category).unwrap().state = state;
        }
        store.insert_job(&job).await.unwrap();
        ids.push(job.id);
    }
    let transitions: Vec<Transition> = case
        .moves
        .iter()
        .map(|(job, categories, to, from)| {
            // Static sources, as the worker's are: leaked once per distinct set.
            let from: &'static [CategoryState] = Box::leak(from.clone().into_boxed_slice());
            Transition {
                job: ids.get(*job).copied().unwrap_or_else(ObjectId::new),
                categories: categories.clone(),
                update: CategoryUpdate {
                    from,
                    attempts: 1,
                    ..CategoryUpdate::to(*to)
                },
            }
        })
        .collect();
    let applied = store
        .transitions(&transitions)
        .await
        .unwrap()
        .into_iter()
        .map(|applied| applied.expect("no statement is refused"))
        .collect();
    let mut jobs = Vec::new();
    for id in ids {
        let job = store.job_by_id(id).await.unwrap().unwrap();
        jobs.push(
            job.categories
                .iter()
                .map(|(&c, record)| (c, record.state))
                .collect(),
        );
    }
    (applied, jobs)
}

#[test]
fn a_group_of_transitions_applies_each_exactly_when_it_may() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (bulk, single) = runtime.block_on(async {
        (
            open("bulk").await,
            open("single").await.without_bulk_write(),
        )
    });
    let config = ProptestConfig {
        cases: 64,
        ..ProptestConfig::default()
    };
    proptest!(config, |(case in any_moves())| {
        runtime.block_on(async {
            let expected = model_moves(&case);
            assert_eq!(apply_moves(&bulk, &case).await, expected, "as one bulkWrite");
            assert_eq!(apply_moves(&single, &case).await, expected, "one statement at a time");
        });
    });
    runtime.block_on(async {
        bulk.database().drop().await.unwrap();
        single.database().drop().await.unwrap();
    });
}
