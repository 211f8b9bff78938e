"""The default run: DFedAvg on a ring of 16 nodes, scikit-learn digits (embedded, no download).

    python -m launch.main --config experiments/configs/default.py --workdir /tmp/dfl_default

Expect about 0.95 test accuracy of the node-averaged model after 200 rounds, in 5-20 s on
2 CPU cores. Every field can be overridden from the command line, e.g.
`--config.topology.name=complete --config.num_nodes=32 --config.algorithm.name=dpsgd`.
"""
from ml_collections import config_dict


def get_config():
  c = config_dict.ConfigDict()
  c.seed = 0  # derives separate streams for init, partition, topology and sampling
  c.num_nodes = 16

  c.data = config_dict.ConfigDict()
  # digits (embedded) | mnist | fashion_mnist | cifar10 | cifar100 | least_squares (synthetic,
  # with model.name=linear; node i gets its own rows A_i, b_i, data.partition is not used) |
  # "package.module:loader"
  c.data.name = "digits"
  c.data.dir = ""  # root with one folder per dataset; empty = $DFL_DATA_DIR
  # iid | dirichlet (per class, Hsu et al.) | dirichlet_client (equal sizes, per-client prior,
  # DisPFL / DA-DPFL) | pathological | natural (the dataset's node_ids_train: writers, users)
  c.data.partition = "dirichlet"
  c.data.alpha = 0.5  # Dirichlet concentration (smaller = more label skew)
  # dirichlet only: a node the split leaves with fewer samples takes them from the largest
  # shards (0: none, and a node left empty is an error)
  c.data.min_samples = 0
  c.data.classes_per_node = 2  # pathological: k, every node holds exactly k classes (Path(k))
  c.data.seed = config_dict.placeholder(int)  # None: derived from seed
  c.data.augment = "none"  # none | crop_flip (4-pixel padded random crop + flip, image data)
  # A dataset named by import path (data.name="my_pkg.data:load") is called with these.
  c.data.kwargs = config_dict.ConfigDict()
  # least_squares (dfl/data/least_squares.py): h >= 0, node i's minimizer x0 + h z_i (0: all
  # nodes share the minimizer); d features; n rows per node (n >= d)
  c.data.heterogeneity = 0.0
  c.data.dim = 10
  c.data.samples_per_node = 32

  c.model = config_dict.ConfigDict()
  # mlp | cnn | lenet5 | logreg | vgg11 | resnet18 (GroupNorm, for CIFAR) | linear (least_squares)
  # | "package.module:Net"
  c.model.name = "mlp"
  # L2 term (l2/2)||params||^2 in every node's loss (part of the objective, unlike the
  # optimizer's weight_decay); logreg with l2 > 0 and linear also report distance_to_optimum
  c.model.l2 = 0.0
  c.model.hidden = (200, 200)  # MLP widths
  # Convolutions (cnn, lenet5, vgg11, resnet18): auto | xla | im2col; auto = im2col (matmuls)
  # on CPU, where XLA's convolutions are slow inside loops, xla (cuDNN) on GPU. dfl/layers.py.
  c.model.conv = "auto"
  # A model named by import path (model.name="my_pkg.nets:Net", a flax Module or a factory)
  # is built with these keyword arguments (plus num_classes when it takes it).
  c.model.kwargs = config_dict.ConfigDict()
  c.model.same_init = True  # all nodes start from one initialisation (False: independent inits)
  # vgg11 / resnet18 normalisation: group (GroupNorm, stateless) | batch (BatchNorm: per-node
  # running statistics carried in the state, dfl/model_state.py)
  c.model.norm = "group"
  # A model with state (BatchNorm statistics): gossip mixes the statistics with the same W as
  # the parameters, the FedAvg server averages them (False: each node keeps its own)
  c.model.average_stats = True

  c.topology = config_dict.ConfigDict()
  c.topology.name = "ring"  # any of topologies.NAMES; `python -m topologies --table` lists them
  # metropolis_hastings | uniform | max_degree | column_uniform (push_sum: column-stochastic)
  c.topology.weights = "metropolis_hastings"
  c.topology.laziness = 0.0  # beta: W <- (1 - beta) W + beta I
  c.topology.degree = 4  # random_regular / small_world (even) degree; random_neighbors draws
  c.topology.edge_prob = config_dict.placeholder(float)  # erdos_renyi p; None: 2 ln N / N
  c.topology.rewire_prob = 0.1  # small_world (Watts-Strogatz) rewiring probability
  c.topology.directed = False  # exponential/random_neighbors/from_edges: row-stochastic W
  c.topology.expected_degree = 0.2  # random_pull: r, mean peers pulled per node per round
  c.topology.edges_file = ""  # from_edges: edge list ('i j [w]' lines, optional 'round t')
  # Schedules ("A Single Merging Suffices", Zhu et al. 2025): none | final_merge (last round
  # on schedule_topology) | dense_window (schedule_window rounds on it, the last ones unless
  # schedule_start says where). Gossip algorithms only (fedavg/fedsam/modest refuse one).
  c.topology.schedule = "none"
  c.topology.schedule_topology = "complete"  # complete = global merge (W = 11^T / N)
  c.topology.schedule_window = 1  # dense_window length in rounds
  # dense_window's first round (>= 1), or a fraction of the run in [0, 1); None: at the end
  c.topology.schedule_start = config_dict.placeholder(float)
  c.topology.num_rounds = config_dict.placeholder(int)  # schedule horizon; None: train.rounds
  c.topology.mixing_form = "auto"  # dense | sparse | auto (sparse when N > 64 and rows are sparse)
  c.topology.seed = config_dict.placeholder(int)  # None: derived from seed

  # Each algorithm declares, in its module (dfl/algorithms/<name>.py), which of these fields it
  # reads, what None means for it, their checks and which are batchable; a field it does not
  # read, set on the command line, is an error. `python -c "from dfl.algorithms import
  # used_fields; print(sorted(used_fields('gossip')))"` lists them.
  c.algorithm = config_dict.ConfigDict()
  # dpsgd | dfedavg | dfedavgm | dfedsam | dfedsam_mgs | fedavg | fedsam | gossip | modest |
  # gradient_tracking (K-GT / DSGT) | exact_diffusion (D^2) | qgm (QG-DSGDm) |
  # choco (CHOCO-SGD, compressed gossip) | push_sum (SGP; needs topology.weights=column_uniform
  # on directed graphs), or a builder "package.module:build" called as
  # build(algorithm_config, BuildContext) -> Algorithm
  c.algorithm.name = "dfedavg"
  c.algorithm.lr = 0.1
  c.algorithm.lr_decay = 1.0  # eta_t = lr * lr_decay**t
  # K local steps per round (used when local_epochs = 0); None: 5, or 1 for dpsgd and
  # gradient_tracking (exact_diffusion and qgm take exactly one)
  c.algorithm.local_steps = config_dict.placeholder(int)
  c.algorithm.local_epochs = 0  # E > 0: node i takes E * ceil(shard_i / batch_size) steps
  c.algorithm.batch_size = 32  # 0: full batches (every step uses the node's whole shard)
  c.algorithm.momentum = config_dict.placeholder(float)  # None: 0.9 for dfedavgm and qgm, else 0
  c.algorithm.weight_decay = 0.0
  c.algorithm.clip_norm = config_dict.placeholder(float)  # gradient global-norm clip (DisPFL: 10)
  # dfedavg/dfedavgm/dfedsam/dfedsam_mgs: carry each node's momentum across rounds (False: reset)
  c.algorithm.keep_optimizer_state = False
  c.algorithm.client_fraction = 0.1  # fedavg/fedsam: fraction of clients sampled per round
  # fedavg/gossip: uniform | num_samples (models weighted by their shard sizes n_k)
  c.algorithm.aggregation_weights = "uniform"
  c.algorithm.rho = 0.05  # dfedsam/dfedsam_mgs/fedsam: SAM radius (0 = plain SGD)
  c.algorithm.gossip_steps = config_dict.placeholder(int)  # Q; None: 4 for dfedsam_mgs, else 1
  c.algorithm.self_weight = 0.5  # gossip/async_gossip: β, weight on the own model vs. received
  # async_gossip: j in [0, 1), each node's interval between training events is p_i * U(1-j, 1+j)
  c.algorithm.interval_jitter = 0.0
  c.algorithm.sample_size = config_dict.placeholder(int)  # modest: s per round; None: min(10, N)
  c.algorithm.aggregators = 1  # modest: a, nodes that aggregate per round (a <= s)
  c.algorithm.success_fraction = 1.0  # modest: sf, aggregate once floor(sf * s) models arrived
  c.algorithm.min_models = 3  # modest: at the timeout, fewer arrivals than this void the round
  c.algorithm.inactivity_rounds = 50  # modest: drop a failed node after R silent rounds (0: never)
  # modest: join/leave/fail events, "ROUND:EVENT:AMOUNT,..." e.g. "50:fail:0.8,30:join:10"
  # (AMOUNT: a count, or a fraction of the active nodes when written with a '.'; num_nodes
  # counts every node that ever takes part, joiners included). See dfl/membership.py.
  c.algorithm.membership = ""
  # choco: Q = identity | top_k | random_k | qsgd | sign (scaled sign), per parameter tensor
  c.algorithm.compressor = "identity"
  c.algorithm.compression_ratio = 0.1  # choco top_k/random_k: fraction of entries kept
  c.algorithm.quantization_levels = 16  # choco qsgd: s, the levels per sign
  c.algorithm.consensus_step = 0.9  # choco: gamma, x += gamma * sum_j w_ij (x̂_j - x̂_i)

  # Variance-corrected averaging (Tian et al. 2024) after every gossip step of any gossip
  # algorithm; see dfl/variance_correction.py.
  c.variance_correction = config_dict.ConfigDict()
  c.variance_correction.enabled = False
  c.variance_correction.target = "follow_others"  # follow_others | follow_self | conservative
  c.variance_correction.beta = 0.5  # conservative: β·own + (1-β)·received variance
  c.variance_correction.estimator = "population"  # population (÷n) | unbiased (÷(n-1))
  c.variance_correction.tensors = "all"  # all (weights + biases) | kernels (>= 2-dim leaves)
  c.variance_correction.strength = 1.0  # r: scale = 1 + r·(σ_target/σ - 1); 0 = plain gossip
  c.variance_correction.eps = 1e-12  # threshold: variance <= eps stays; additive: in the sqrt
  c.variance_correction.eps_mode = "threshold"  # threshold (exact ratio) | additive (DFL_torch)
  c.variance_correction.norm_layers = "skip"  # skip (every *norm* leaf) | correct (all but stats)
  c.variance_correction.received_weights = "mixing"  # mixing (W-weighted) | uniform (plain mean)

  # How a node combines the models it received (dfl/aggregation/rules.py), in every gossip
  # algorithm; mean is plain gossip (dfl.mixing.mix). Not combinable with variance_correction.
  c.aggregation = config_dict.ConfigDict()
  # mean | median | trimmed_mean | krum | clipped_gossip | balance | "package.module:rule"
  c.aggregation.rule = "mean"
  c.aggregation.trim = 1.0  # trimmed_mean: b per side; a count >= 1 or a fraction < 1 of m_i
  c.aggregation.krum_f = 1  # krum: f, Byzantine neighbours tolerated (m_i >= f + 3)
  c.aggregation.multi_krum_m = 1  # krum: models averaged (1 = Krum, > 1 = multi-Krum)
  c.aggregation.clip_radius = config_dict.placeholder(float)  # clipped_gossip τ; None: adaptive
  c.aggregation.balance_gamma = 0.3  # balance: γ, accept ‖x_j - x_i‖ <= γ e^(-κ t/T) ‖x_i‖
  c.aggregation.balance_kappa = 1.0  # balance: κ
  c.aggregation.balance_alpha = 0.5  # balance: α, weight on the own model

  # Byzantine / Sybil nodes (dfl/adversary/): what they send replaces their messages in every
  # gossip step; attackers are left out of every reported figure (the *_honest metrics).
  c.adversary = config_dict.ConfigDict()
  # none | sign_flip | gaussian | alie | ipm | constant | label_flip | sybil
  c.adversary.attack = "none"
  c.adversary.fraction = 0.0  # f = round(fraction * num_nodes) Byzantine nodes
  c.adversary.count = config_dict.placeholder(int)  # f itself (instead of fraction)
  c.adversary.placement = "random"  # random (seeded) | highest_degree | ids
  c.adversary.ids = ()  # placement=ids: the Byzantine node ids
  c.adversary.scale = 1.0  # sign_flip: -scale·μ; constant: every coordinate = scale
  c.adversary.noise_std = 1.0  # gaussian: N(0, noise_std²)
  c.adversary.alie_z = config_dict.placeholder(float)  # alie: z; None: Baruch et al.'s z(n, f)
  c.adversary.ipm_epsilon = 0.1  # ipm: -ε·μ
  # sybil: S > 0 adds the identities as the S last nodes, attached to the honest graph (built
  # on the first num_nodes - S) with sybil_degree links each; 0: Byzantine nodes of the graph
  c.adversary.sybil_nodes = 0
  c.adversary.sybil_degree = 2
  c.adversary.sybil_attack = "alie"  # sybil: the model all identities send (not label_flip)
  c.adversary.seed = config_dict.placeholder(int)  # None: derived from seed

  # Simulated time (dfl/system/): per-node compute speed and uplink, a virtual clock
  # (sim_seconds in metrics.jsonl), round deadlines. Node fields take a spec: "100",
  # "uniform:LOW,HIGH", "lognormal:mean=M,sigma=S" (seeded, one draw per node) or
  # "trace:PATH.csv" (dfl/system/traces.py). Off: nothing is built, every figure unchanged.
  c.system = config_dict.ConfigDict()
  c.system.enabled = False
  c.system.samples_per_second = "1000"  # training samples a node processes per second
  c.system.bandwidth_bytes_per_second = "1250000"  # a node's uplink (10 Mbit/s)
  c.system.latency_seconds = "0.05"  # paid once per round by a node that sends
  c.system.server_bandwidth_bytes_per_second = 125e6  # fedavg/fedsam server uplink (1 Gbit/s)
  c.system.server_latency_seconds = 0.05
  # > 0: a round deadline (dpsgd/dfedavg/dfedavgm/dfedsam/gossip/fedavg/fedsam): nodes whose
  # local phase plus sending takes longer are late (dropped_update_fraction in metrics.jsonl)
  c.system.deadline_seconds = 0.0
  c.system.late_updates = "drop"  # late updates: drop (left out) | stale (round-start model)
  c.system.tick_seconds = 0.0  # async_gossip: one tick; 0 = the fastest node's period
  # sigma > 0: each round, node i's compute time x exp(sigma z - sigma^2/2), z ~ N(0,1) per round
  c.system.compute_jitter = 0.0
  # Who is online per round (same algorithms as the deadline; offline = dropped, takes no time;
  # offline_fraction in metrics.jsonl): "none" | "markov:p_fail=F,p_recover=R" |
  # "trace:PATH.csv" (columns device,start_round,end_round; dfl/system/availability.py)
  c.system.availability = "none"
  c.system.seed = config_dict.placeholder(int)  # None: derived from seed

  c.train = config_dict.ConfigDict()
  c.train.rounds = 200
  # How per-node work is lifted over nodes (dfl/execution.py): auto | vmap | map | chunk:G.
  # auto picks per model and backend and logs it: vmap on GPU/TPU; on CPU a loop over cache-sized
  # vmapped groups of nodes (chunk:G, G from the model size; map for big models).
  c.train.execution = "auto"

  c.eval = config_dict.ConfigDict()
  c.eval.every_rounds = 10  # also the number of rounds compiled into one host sync
  c.eval.batch_size = 1000
  # Test samples for each node's own model (0 = all): per_node = node i on its own slice of a
  # fixed permutation of the test set, min(local_examples, ceil(test size / N)) samples, so the
  # slices are disjoint and cover the test set at most once; shared = every node on the first
  # local_examples (the definition before issue 20, whose default was 2000). dfl/evaluation.py.
  c.eval.local_examples = 250
  c.eval.local_subset = "per_node"
  c.eval.personal_test = False  # also test on per-node splits with the train label mix
  # Training batches that re-estimate the node-averaged model's BatchNorm statistics before it
  # is evaluated (as the single-merge reference does; 0 = off: the nodes' mean statistics)
  c.eval.recompute_stats_batches = 0

  c.logging = config_dict.ConfigDict()
  c.logging.tensorboard = False  # also write TensorBoard events to workdir/tensorboard/

  # Scale-out (dfl/sharding.py): the node axis sharded over a device mesh; num_nodes must be a
  # multiple of the mesh size (devices per process x processes).
  c.mesh = config_dict.ConfigDict()
  c.mesh.devices = 1  # devices per process the node axis is sharded over (0 = all local devices)
  c.mesh.distributed = False  # multi-host: call jax.distributed.initialize() before anything
  c.mesh.coordinator_address = ""  # host:port of process 0; empty = detect (TPU pod, SLURM, MPI)
  c.mesh.num_processes = config_dict.placeholder(int)  # None: detected from the cluster
  c.mesh.process_id = config_dict.placeholder(int)  # None: detected from the cluster

  # Checkpoints in workdir/checkpoints; re-running the same command in the workdir resumes.
  c.checkpoint = config_dict.ConfigDict()
  # Checkpoints are taken where a chunk of eval.every_rounds rounds ends: at the end of each
  # chunk that reaches or passes a multiple of every_rounds (0: none but the last round and
  # SIGTERM/SIGINT). The last round is always checkpointed.
  c.checkpoint.every_rounds = 50
  c.checkpoint.max_to_keep = 3  # newest checkpoints kept; older ones go once a newer one is whole
  c.checkpoint.async_save = True  # write in a background thread while the next rounds run
  # True: delete this workdir's checkpoints and outputs and start at round 0. Meant for one
  # deliberate run: a scheduler that requeues the command would restart from scratch each time.
  c.checkpoint.fresh = False
  return c
