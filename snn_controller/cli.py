"""snnctl: the command-line tool for everything outside ``ros2 run`` / ``ros2 launch``.

Every subcommand prints human-readable output, or one JSON object with ``--json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys

os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")  # DDS discovery stays on this machine


def _emit(args, result: dict, text: str) -> None:
    print(json.dumps(result) if args.json else text)


def _fmt_rate(r: float) -> str:
    return f"{r / 1e6:.2f}M" if r >= 1e6 else f"{r / 1e3:.1f}k"


# --- sim ---------------------------------------------------------------------------------------
def cmd_sim_replay(args) -> int:
    if (args.bag is None) == (args.input is None):
        raise ValueError("give either --input FILE.npz --output FILE.npz, or --bag BAG --drone NAME")
    if args.bag is not None:
        return cmd_sim_replay_bag(args)
    if args.output is None:
        raise ValueError("--input needs --output FILE.npz")
    import numpy as np

    from .sim.command_replay import load_replay_input, replay
    from .sim.drone import load_drone

    model = load_drone(args.drone or "cf21")
    args.engine = args.engine or "batched"
    state, actions, file_dt = load_replay_input(args.input)
    dt = args.dt or file_dt or 0.01
    out = replay(model, args.engine, state, actions, dt)
    np.savez(args.output, **out)
    n, steps = actions.shape[:2]
    result = {"output": str(args.output), "drones": n, "steps": steps, "dt": dt, "engine": args.engine,
              "drone": model.name, "final_position": out["position"][:, -1].tolist()}
    _emit(args, result, f"replayed {n} drone(s) x {steps} steps at dt={dt} s on the {args.engine} engine "
                        f"({model.name}) -> {args.output}")
    return 0


def cmd_sim_replay_bag(args) -> int:
    """One drone of a recorded flight, replayed from its first state: the position error."""
    from .replay import format_replay, replay_comparison

    if args.drone is None:
        raise ValueError("--bag needs --drone NAME (a drone of the bag)")
    r = replay_comparison(args.bag, args.drone, engine=args.engine or "pybullet", out=args.out, drone_model=args.drone_model,
                          command_delay=args.command_delay, horizon=args.horizon)
    _emit(args, r, format_replay(r))
    return 0


def cmd_sim_crazyflie(args) -> int:
    """Simulated Crazyflies on cflib's udp:// link until Ctrl-C (docs/crtp_sim.md)."""
    import time

    from .crazyflie.server import CrazyflieServer

    options = {"require_arming": not args.auto_arm}
    if args.crazyflies:
        server = CrazyflieServer.from_fleet(args.crazyflies, **options)
    else:
        server = CrazyflieServer(drones=args.drones, base_port=args.port, **options)
    with server:
        _emit(args, {"uris": server.uris, "names": server.names},
              "\n".join(f"{name}: {uri}" for name, uri in zip(server.names, server.uris))
              + "\nserving simulated Crazyflies; Ctrl-C stops")
        sys.stdout.flush()
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(1.0)
    return 0


def cmd_drones(args) -> int:
    from .sim.drone import available_drones, load_drone

    rows = []
    for name in available_drones():
        m = load_drone(name)
        rows.append({"name": name, "mass": m.mass, "hover_rotor_speed": round(m.hover_rotor_speed, 4),
                     "hover_action": round(m.hover_action, 4), "thrust_to_weight": round(m.thrust_to_weight, 3),
                     "motor_time_constant": m.motor_time_constant, "source": m.source})
    text = "\n".join(f"{r['name']:6s} mass {r['mass']} kg, hover w {r['hover_rotor_speed']}, "
                     f"thrust/weight {r['thrust_to_weight']}, motor lag {r['motor_time_constant']} s" for r in rows)
    _emit(args, {"drones": rows}, text)
    return 0


# --- bench -------------------------------------------------------------------------------------
def cmd_bench_sim(args) -> int:
    from .bench import bench_sim

    r = bench_sim(args.drone, min_seconds=args.seconds, compile=not args.no_compile)
    lines = [f"pybullet engine, 1 drone ({r['pybullet_substeps']} substeps): "
             f"{_fmt_rate(r['pybullet_steps_per_s'])} steps/s"]
    for key in ("batched_eager_drone_steps_per_s", "batched_compiled_drone_steps_per_s"):
        if key in r:
            lines.append(f"{key.split('_')[1]} batched RK4 float32: " + ", ".join(
                f"N={n}: {_fmt_rate(v)} drone-steps/s" for n, v in r[key].items()))
    lines.append(f"ratio batched (N=max) / pybullet: {r['ratio_batched_at_max_n_to_pybullet']:.0f}x")
    _emit(args, r, "\n".join(lines))
    return 0


def cmd_bench_policy(args) -> int:
    from .bench import bench_policy

    r = bench_policy(args.model, repeats=args.repeats)
    lines = [f"single-step latency, {r['network']}, batch 1, 1 thread (p50 / p99):"]
    for key in ("numpy_float32", "numpy_float64", "torch", "snntorch", "c_ctypes", "ctypes_noop"):
        if r.get(key):
            lines.append(f"  {key:14s} {r[key]['p50_us']:8.1f} us / {r[key]['p99_us']:8.1f} us")
    if r.get("snntorch") is None:
        lines.append("  " + r["snntorch_note"])
    else:
        lines.append(f"  numpy (float32) is {r['speedup_numpy_vs_snntorch']:.1f}x faster than snnTorch "
                     f"{r['snntorch_version']}")
    if r.get("c_ctypes") is None:
        lines.append("  " + r["c_note"])
    else:
        lines.append(f"  the exported C step (snnctl export --format c, gcc -O2) through ctypes; a ctypes call of a "
                     f"C step that does nothing costs {r['ctypes_noop']['p50_us']:.1f} us of it, so the step itself "
                     f"takes about {r['c_step_without_ctypes_p50_us']:.1f} us")
    _emit(args, r, "\n".join(lines))
    return 0


def cmd_bench_loop(args) -> int:
    from .ros.bench_loop import bench_loop

    r = bench_loop(args.model, rates=args.rates, seconds=args.seconds)
    lines = ["odometry -> snn_policy -> cmd_motors_stamped, end to end (p50 / p99):"]
    for rate in args.rates:
        x = r[f"{int(rate)}Hz"]
        lines.append(f"  {int(rate):4d} Hz: {x['p50_us']:.0f} us / {x['p99_us']:.0f} us "
                     f"({x['answered']} of {x['sent']} answered)")
    _emit(args, r, "\n".join(lines))
    return 0


def cmd_bench_sil(args) -> int:
    from .ros.bench_sil import bench_sil

    r = bench_sil(bridges=args.bridges, drones=args.drones)
    lines = [f"one training rollout of {r['drones']} drones ({r['steps_per_rollout']} env steps), the method's actor, "
             f"guide and conditions:", f"  in process:  {_fmt_rate(r['inprocess']['env_steps_per_s'])} env steps/s"]
    for count in args.bridges:
        x = r[f"{count}_bridges"]
        lines.append(f"  {count} bridge(s): {_fmt_rate(x['env_steps_per_s'])} env steps/s "
                     f"({x['ratio_to_inprocess']:.2f}x in process); time: trainer {x['share_trainer']:.0%}, "
                     f"bridge physics {x['share_bridge_physics']:.0%}, transport {x['share_transport']:.0%}")
    _emit(args, r, "\n".join(lines))
    return 0


def cmd_bag_info(args) -> int:
    from .io.bag import bag_info

    r = bag_info(args.path)
    lines = [f"{r['path']}: {r['messages']} messages over {r['duration_s']:.1f} s"]
    lines += [f"  {name:28s} {t['messages']:6d}  {t['type']}" for name, t in sorted(r["topics"].items())]
    _emit(args, r, "\n".join(lines))
    return 0


def cmd_bag_report(args) -> int:
    from .report import format_report, write_report

    r = write_report(args.path, out=args.out, mission=args.mission)
    _emit(args, r["metrics"], format_report(r))  # --json: the metrics, as metrics.json holds them
    return 0


def cmd_bench_train(args) -> int:
    from .bench import bench_train

    r = bench_train(args.drones, updates=args.updates)
    text = (f"rollouts: {_fmt_rate(r['rollout_env_steps_per_s'])} env steps/s with the SNN in the loop "
            f"({r['num_drones']} drones)\nupdates: {r['updates_per_s']:.2f}/s = "
            f"{_fmt_rate(r['sequence_steps_per_s'])} sequence steps/s (batch {r['batch_windows']} x L {r['window']})")
    _emit(args, r, text)
    return 0


# --- launch ------------------------------------------------------------------------------------
def cmd_launch(args) -> int:
    from .config import ConfigError
    from .ros.launch import LaunchRunner, parse_launch

    given = {}
    for item in args.arguments:
        if ":=" not in item:
            raise ConfigError(f"launch argument {item!r} must be written name:=value")
        k, v = item.split(":=", 1)
        given[k] = v
    desc = parse_launch(args.file, given)
    if args.print:
        from .ros.launch import launch_commands

        cmds = launch_commands(desc)  # refuses a node that does not exist, naming it
        _emit(args, {"file": str(desc.path), "commands": cmds}, "\n".join(" ".join(c) for c in cmds))
        return 0
    monitor_names = None
    if args.monitor:  # the drones the launched sim_bridge simulates
        from .sim.fleet import load_fleet

        sim = next((n for n in desc.nodes if n.executable == "sim_bridge"), None)
        fleet_file = dict(sim.parameters).get("crazyflies") if sim else given.get("crazyflies")
        monitor_names = list(load_fleet(fleet_file or None).enabled_robots())
    runner = LaunchRunner(desc, output=sys.stderr if args.json else sys.stdout)
    summary = mission = None
    # the monitor listens before the nodes start: in lockstep the simulation can run faster than
    # real time, and states sent before it matched would be missing from the mission's score
    with _fleet_monitor(monitor_names) as monitor, runner:
        try:
            if monitor:
                summary, mission = _monitor(runner, monitor, args, _launched_mission(desc))
            else:
                runner.wait(args.duration)
        except KeyboardInterrupt:
            pass
    failures = runner.failures()  # died, or had to be killed: which, and why (the runner said it too)
    failed = [(f["node"], f["code"]) for f in failures]
    result = {"file": str(desc.path), "nodes": [n.label for n in desc.nodes], "failed": failed,
              "failures": failures, "summary": summary, "mission": mission}
    text = f"stopped {len(desc.nodes)} node(s)" + (f"; failed: {failed}" if failed else "")
    if summary:
        text += "\n" + "\n".join(f"{name}: {s}" for name, s in summary.items())
    if mission:
        from .task.mission import format_metrics

        text += "\n" + format_metrics(mission)
    _emit(args, result, text)
    # a launch whose mission crashed a drone failed, however cleanly its nodes stopped
    return 1 if failed or (mission and mission["crashed"]) else 0


def _launched_mission(desc):
    """(mission, take-off points) of the launch's mission_sequencer, or None: the monitor scores
    the mission with exactly the parameters the sequencer got."""
    from .sim.fleet import load_fleet
    from .task.mission import load_mission, take_off_points

    node = next((n for n in desc.nodes if n.executable == "mission_sequencer"), None)
    if node is None:
        return None
    p = dict(node.parameters)
    robots = load_fleet(p.get("crazyflies") or None).enabled_robots()
    return load_mission(p.get("mission", "hover")), take_off_points(robots)


@contextlib.contextmanager
def _fleet_monitor(names):
    """(FleetMonitor node, its executor) in its own ROS context, or None without ``names``."""
    if not names:
        yield None
        return
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.signals import SignalHandlerOptions

    from .ros.monitor import FleetMonitor

    context = rclpy.Context()
    # no rclpy signal handlers: Ctrl-C and SIGTERM reach the launch runner (KeyboardInterrupt), which stops the nodes
    rclpy.init(args=[], context=context, signal_handler_options=SignalHandlerOptions.NO)
    node = FleetMonitor(names, context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    try:
        yield node, executor
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.shutdown(context=context)


def _monitor(runner, monitor, args, mission=None) -> tuple[dict, dict | None]:
    import time

    node, executor = monitor
    end = None if args.duration is None else time.monotonic() + args.duration
    next_print = time.monotonic() + 1.0
    while (end is None or time.monotonic() < end) and not runner.failed():
        executor.spin_once(timeout_sec=0.05)
        if mission is not None and node.mission_done(mission[0]):  # a mission's flight ends by itself
            break
        if time.monotonic() >= next_print and not args.json:
            next_print += 1.0
            print(node.status_line(), flush=True)
    return node.summary(), None if mission is None else node.mission_report(*mission)


# --- models ------------------------------------------------------------------------------------
def _steps_range(text: str) -> tuple[int, int]:
    """'N' or 'LO-HI' (control steps) as a range."""
    try:
        lo, _, hi = text.partition("-")
        return int(lo), int(hi or lo)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or LO-HI (control steps), got {text!r}") from None


def _conditions(args):
    """The flight conditions of ``snnctl eval``: --randomize FILE, then --delay / --jitter /
    --observation-delay on top."""
    from dataclasses import replace

    from .task.spec import Conditions, load_conditions

    conditions = load_conditions(args.randomize) if args.randomize else Conditions()
    latency = conditions.latency
    if args.delay is not None:
        latency = replace(latency, action_delay=args.delay)
    if args.jitter is not None:
        latency = replace(latency, jitter=args.jitter)
    if args.observation_delay is not None:
        latency = replace(latency, observation_delay=args.observation_delay)
    return replace(conditions, latency=latency)


def _evaluate(model: str, args) -> tuple[dict, str, int]:
    """One ``snnctl eval`` run: (result, drone, steps the guide flies first)."""
    from .config import to_dict
    from .control.controllers import evaluate_model, make_guide, model_task, pid_gains
    from .task.spec import TaskConfig

    conditions = _conditions(args)
    if pid_gains(model) is not None:  # a PID guide alone ('pid' or a gains file), for comparison
        from .task.envs import evaluate

        task = TaskConfig(drone=args.drone, start=args.starts, stage=args.stage, action=args.action).under(conditions)
        r = evaluate(make_guide(model, args.drone, args.episodes, task.dt, task.ctbr_scaling), task, args.episodes,
                     engine=args.engine, seed=args.seed)
        return {**r, "guide": model, "conditions": to_dict(conditions)}, args.drone, 0
    from .io.model_file import load_model

    _, manifest = load_model(model)
    task = model_task(manifest, start=args.starts, stage=args.stage)
    r = evaluate_model(model, task.under(conditions), args.episodes, seed=args.seed, engine=args.engine,
                       warmup_steps=args.warmup_steps, guide=args.guide)
    return {**r, "conditions": to_dict(conditions)}, manifest["drone"], args.warmup_steps


def cmd_eval_mission(args) -> int:
    from .config import to_dict
    from .control.controllers import deployed_controller, model_task, pid_gains
    from .io.model_file import load_model
    from .task.mission import fly_mission, format_metrics, load_mission
    from .task.spec import TaskConfig

    mission = load_mission(args.mission)
    if pid_gains(args.model) is not None:
        task = TaskConfig(drone=args.drone, stage=args.stage, action=args.action)
    else:
        task = model_task(load_model(args.model)[1], stage=args.stage)
    drone, conditions = task.drone, _conditions(args)
    task = task.under(conditions)
    controller = deployed_controller(args.model, drone, args.episodes, task.dt, args.warmup_steps, args.guide,
                                     ctbr=task.ctbr_scaling)
    r = fly_mission(mission, controller, task, drones=args.episodes, engine=args.engine, seed=args.seed)
    r.update(model=str(args.model), drone=drone, conditions=to_dict(conditions), guide=args.guide)
    _emit(args, r, f"{args.model} ({drone}), {args.engine} engine, seed {args.seed}:\n" + format_metrics(r))
    return 0


def cmd_eval(args) -> int:
    if args.mission:
        return cmd_eval_mission(args)
    r, drone, warmup = _evaluate(args.model, args)
    r.update({"model": str(args.model), "drone": drone, "starts": args.starts, "stage": args.stage,
              "engine": args.engine, "seed": args.seed, "guide_warmup_steps": warmup,
              "guide": r.get("guide", args.guide)})
    text = (f"{args.model} ({drone}) on {args.starts} starts, stage {args.stage}, {args.engine} engine, "
            f"{r['episodes']} episodes, guide ({r['guide']}) flies the first {warmup} steps:\n"
            f"  return {r['return_mean']:.1f} +- {r['return_std']:.1f}   survival {100 * r['survival_rate']:.1f} %\n"
            f"  position error (last half) {100 * r['position_error_mean']:.2f} cm   "
            f"action deviation {r['action_deviation_mean']:.3f}")
    lat = r["conditions"]["latency"]
    if lat != {"action_delay": [0, 0], "jitter": 0.0, "observation_delay": [0, 0]} or args.randomize:
        text += (f"\n  latency: action delay {lat['action_delay']} steps, jitter {lat['jitter']}, observation delay "
                 f"{lat['observation_delay']} steps" + (f"; randomisation from {args.randomize}" if args.randomize else ""))
    if "spikes_per_step" in r:
        text += f"\n  spikes per step per layer {r['spikes_per_step']}"
    if args.compare:  # the same starts (same seed), start by start
        ref, _, _ = _evaluate(args.compare, args)
        crashed, ref_crashed = set(r["crashed_episodes"]), set(ref["crashed_episodes"])
        r["compare"] = {"model": args.compare, "return_mean": ref["return_mean"], "survival_rate": ref["survival_rate"],
                        "lost": sorted(crashed - ref_crashed), "saved": sorted(ref_crashed - crashed)}
        c = r["compare"]
        text += (f"\n  vs {args.compare} on the same starts: its return {c['return_mean']:.1f}, survival "
                 f"{100 * c['survival_rate']:.1f} %; lost {len(c['lost'])} starts it survives {c['lost']}, "
                 f"saved {len(c['saved'])} it loses {c['saved']}")
    _emit(args, r, text)
    return 0


def cmd_latency(args) -> int:
    """Each controller at each fixed action delay, on the same starts: the latency table."""
    delays = sorted(int(d) for d in args.delays.split(","))
    rows = []
    for model in args.models:
        cells, holding = {}, None
        for d in delays:
            r, _, _ = _evaluate(model, argparse.Namespace(**{**vars(args), "delay": (d, d)}))
            cells[d] = {k: r[k] for k in ("return_mean", "survival_rate", "position_error_mean")}
        for d in delays:  # the largest delay up to which every delay keeps the bound
            if cells[d]["survival_rate"] < args.bound:
                break
            holding = d
        rows.append({"model": model, "delays": cells, "max_delay_holding": holding})
    result = {"starts": args.starts, "episodes": args.episodes, "seed": args.seed, "engine": args.engine,
              "survival_bound": args.bound, "rows": rows}
    head = f"{'controller':40s}" + "".join(f"{f'delay {d}':>22s}" for d in delays) + f"  largest delay >= {args.bound:.0%}"
    lines = [f"{args.starts} starts, {args.episodes} episodes (seed {args.seed}), {args.engine} engine, stage "
             f"{args.stage}: return / survival / position error per fixed action delay (control steps)", head]
    for row in rows:
        cells = "".join((f"{c['return_mean']:7.1f} {100 * c['survival_rate']:5.1f}% " + (
            f"{100 * c['position_error_mean']:5.2f}cm" if c["survival_rate"] > 0 else "      -")).rjust(22)
            for c in row["delays"].values())
        lines.append(f"{row['model'][-40:]:40s}{cells}  {row['max_delay_holding']}")
    _emit(args, result, "\n".join(lines))
    return 0


def cmd_train(args) -> int:
    from dataclasses import replace

    from .train.config import load_train_config
    from .train.run import train

    config = load_train_config(args.config)
    if args.seed is not None:
        config = replace(config, seed=args.seed)
    if args.guide is not None:
        config = replace(config, guide=args.guide)
    # a run with another guide gets its own default directory
    guide_tag = "" if args.guide is None else "_" + os.path.splitext(os.path.basename(args.guide))[0]
    out = args.out or f"runs/{config.name}{guide_tag}_seed{config.seed}"
    log = (lambda *a: print(*a, file=sys.stderr)) if args.json else print
    r = train(config, out, resume=args.resume, log=log, progress_bar=not args.json)
    result = {k: r[k] for k in ("out_dir", "iterations", "env_steps", "train_seconds", "evaluation", "milestones")}
    ev = r["evaluation"]
    text = (f"trained {config.name} (seed {config.seed}) in {r['train_seconds']:.0f} s, {r['env_steps']} env steps "
            f"-> {out}/final.safetensors (best: {out}/best.safetensors)\n" + "\n".join(
                f"  {s}: return {e['return_mean']:.1f}, survival {100 * e['survival_rate']:.1f} %, "
                f"position error {100 * e['position_error_mean']:.2f} cm" for s, e in ev.items()))
    _emit(args, result, text)
    return 0


def _export_nir(args) -> tuple[dict, str]:
    from .export.nir_graph import export_nir

    out = args.out or os.path.splitext(args.model)[0] + ".nir"
    r = export_nir(args.model, out)
    return r, (f"{args.model} -> {out}: NIR graph {' -> '.join(r['nodes'])}, dt {r['dt']} s; the reset (subtractive, "
               "one step late) and the tanh readout are stated in metadata only (docs/nir.md)")


def _export_c(args) -> tuple[dict, str]:
    from .config import ConfigError
    from .export.c_module import export_c_module

    if args.out is None:
        raise ConfigError("--format c needs --out DIR (the directory for PREFIX.h and PREFIX.c)")
    r = export_c_module(args.model, args.out, prefix=args.name)
    return r, (f"wrote {' and '.join(r['files'])}: {r['network']}, {r['weight_bytes']} bytes of weights, "
               f"{r['state_bytes']} bytes of state (model sha256 {r['sha256'][:12]})")


EXPORT_FORMATS = {"c": _export_c, "nir": _export_nir}  # --format: writer(args) -> (result, text)


def cmd_export(args) -> int:
    """A model file for use outside this package, in the format named by --format."""
    r, text = EXPORT_FORMATS[args.format](args)
    _emit(args, r, text)
    return 0


def cmd_import_nir(args) -> int:
    from .export.nir_graph import import_nir

    r = import_nir(args.file, args.out)
    _emit(args, r, f"{args.file} -> {args.out}: {r['architecture']['type']} {r['architecture']['hidden']}, "
                   f"dt {r['dt']} s, drone {r['drone']}")
    return 0


# --- real drones -------------------------------------------------------------------------------
def cmd_crazyflie(args) -> int:
    """A request to a running crazyflie_bridge (docs/real_flight.md), or its status per drone."""
    from .ros import bridge_client

    if args.request == "status":
        found = bridge_client.status(timeout=args.timeout)
        if not found:
            raise ValueError(f"no crazyflie_bridge status on /diagnostics within {args.timeout} s: is it running "
                             "(same ROS_DOMAIN_ID)?")
        keys = ("mode", "link", "vbat", "link_quality", "state_age_ms", "command_age_ms", "rejected")
        _emit(args, found, "\n".join(f"{name}: " + ", ".join(f"{k} {v.get(k)}" for k in keys) + f" ({v['message']})"
                                     for name, v in found.items()))
        return 0
    ok, message = bridge_client.call(args.request, args.drone, timeout=args.timeout)
    _emit(args, {"success": ok, "message": message}, message)
    return 0 if ok else 1


# --- parser ------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="snnctl", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def add(p, name, func, help_):
        sp = p.add_parser(name, help=help_, description=help_)
        sp.add_argument("--json", action="store_true", help="print one JSON object")
        sp.set_defaults(func=func)
        return sp

    sim = sub.add_parser("sim", help="simulator tools").add_subparsers(dest="sim_command", required=True)
    p = add(sim, "replay", cmd_sim_replay, "replay recorded motor commands from initial states: an .npz "
            "(--input, --output), or one drone of a recorded bag compared with its recording (--bag, --drone)")
    p.add_argument("--drone", default=None, help="with --input: drone model name or path (.yaml/.urdf; default "
                   "cf21); with --bag: the drone's name in the bag")
    p.add_argument("--engine", choices=["batched", "pybullet"], default=None,
                   help="default: batched for --input, pybullet (sim_bridge's engine) for --bag")
    p.add_argument("--input", default=None, help=".npz with initial states and actions (N,T,4)")
    p.add_argument("--output", default=None, help=".npz to write the trajectories to")
    p.add_argument("--dt", type=float, default=None, help="control period [s] (default: the file's, else 0.01)")
    p.add_argument("--bag", default=None, help="a recorded flight (rosbag2 directory)")
    p.add_argument("--out", default=None, help="with --bag: directory for replay_<drone>_<engine>.png/.json "
                   "(default BAG_report)")
    p.add_argument("--drone-model", default=None, help="with --bag: the drone model the bag flew (default: "
                   "all.drone of config/crazyflies.yaml)")
    p.add_argument("--command-delay", type=int, default=None, help="with a --bag without motor_state (its "
                   "commands reconstructed): sim_bridge's command_delay [steps] (default: the smallest "
                   "command-age p50 the bridge reported)")
    p.add_argument("--horizon", type=float, default=None, metavar="SECONDS", help="with --bag: start again "
                   "from the recorded state every SECONDS (default: the whole flight from the first state)")

    p = add(sim, "crazyflie", cmd_sim_crazyflie, "serve simulated Crazyflies on cflib's udp:// link (drone i on "
            "udp://127.0.0.1:PORT+i, or the udp:// uris of a fleet file) until Ctrl-C")
    p.add_argument("--crazyflies", default=None, help="fleet file whose robots have udp://127.0.0.1:PORT uris "
                   "(e.g. config/crazyflies_udp.yaml); overrides --port and --drones")
    p.add_argument("--port", type=int, default=19850, help="the first drone's UDP port (default 19850, where "
                   "cflib's udp scan looks)")
    p.add_argument("--drones", type=int, default=1, help="number of drones (default 1)")
    p.add_argument("--auto-arm", action="store_true", help="firmware without CONFIG_MOTORS_REQUIRE_ARMING: arm "
                   "automatically (default: an arming request is needed, as cf21bl and bolt builds)")

    add(sub, "drones", cmd_drones, "list the drone models")

    bench = sub.add_parser("bench", help="benchmarks").add_subparsers(dest="bench_command", required=True)
    p = add(bench, "sim", cmd_bench_sim, "engine throughput: pybullet vs batched")
    p.add_argument("--drone", default="cf21")
    p.add_argument("--seconds", type=float, default=1.0, help="measuring time per case")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile variant")

    p = add(bench, "policy", cmd_bench_policy, "single-step latency of the spiking actor")
    p.add_argument("--model", default=None, help="a model file (default: a fresh network of the paper's size)")
    p.add_argument("--repeats", type=int, default=5000)
    p = add(bench, "loop", cmd_bench_loop, "end-to-end ROS latency through snn_policy")
    p.add_argument("--model", default=None, help="model file (default: the shipped one)")
    p.add_argument("--rates", type=float, nargs="+", default=[100.0, 500.0])
    p.add_argument("--seconds", type=float, default=3.0, help="measuring time per rate")

    bag = sub.add_parser("bag", help="rosbag2 tools").add_subparsers(dest="bag_command", required=True)
    p = add(bag, "info", cmd_bag_info, "topics, types and message counts of a recorded bag")
    p.add_argument("path", help="bag directory")
    p = add(bag, "report", cmd_bag_report, "plots, a one-page HTML summary and metrics of a recorded flight")
    p.add_argument("path", help="bag directory")
    p.add_argument("--out", default=None, help="report directory (default: BAG_report, beside the bag)")
    p.add_argument("--mission", default=None, metavar="FILE",
                   help="the mission flown (default: the one /mission/status names, from config/missions/)")

    p = add(bench, "sil", cmd_bench_sil, "sim-in-the-loop training throughput: in process vs training bridges")
    p.add_argument("--bridges", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2, 4],
                   help="numbers of bridges to measure, comma separated (default 1,2,4)")
    p.add_argument("--drones", type=int, default=64, help="drones per rollout (default: the method's 64)")

    p = add(bench, "train", cmd_bench_train, "training throughput: rollouts and sequence updates")
    p.add_argument("--drones", type=int, default=64, help="rollout drones (the training config uses 64)")
    p.add_argument("--updates", type=int, default=10)

    p = add(sub, "eval", cmd_eval, "evaluate a model file on the paper task")
    p.add_argument("model", help="model file (.safetensors), or a PID alone: 'pid' or a gains file (.yaml)")
    p.add_argument("--drone", default="cf21", help="drone for a PID (a model file names its own)")
    p.add_argument("--action", choices=["motors", "ctbr"], default="motors",
                   help="what a PID's outputs drive (a model file names its own): motor commands, or CTBR "
                        "setpoints through the firmware's rate loop (docs/ctbr.md)")
    p.add_argument("--episodes", type=int, default=20)
    p.add_argument("--stage", type=int, default=5, help="curriculum stage of the reward (0..5)")
    p.add_argument("--starts", choices=["paper", "moderate"], default="paper")
    p.add_argument("--engine", choices=["batched", "pybullet"], default="batched")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--warmup-steps", type=int, default=50, help="steps the guide flies first")
    p.add_argument("--guide", default="pid", help="the guide of the warm-up: 'pid', a PID gains file (.yaml) or a guide ANN model file")
    p.add_argument("--compare", default=None, metavar="MODEL",
                   help="also fly MODEL (as the model argument) on the same starts: which starts each loses")
    p.add_argument("--delay", type=_steps_range, default=None, metavar="N|LO-HI",
                   help="action delay in control steps, fixed or drawn per episode (default: none, or --randomize's)")
    p.add_argument("--jitter", type=float, default=None, help="probability of one more step of delay per command")
    p.add_argument("--observation-delay", type=_steps_range, default=None, metavar="N|LO-HI",
                   help="observation delay in control steps")
    p.add_argument("--mission", default=None, metavar="FILE",
                   help="fly a mission (config/missions/*.yaml, or its name) from the ground; --episodes drones")
    p.add_argument("--randomize", default=None, metavar="FILE",
                   help="flight conditions file (config/conditions/*.yaml): latency and domain randomisation")

    p = add(sub, "latency", cmd_latency, "fly controllers at fixed action delays on the same starts (a table)")
    p.add_argument("models", nargs="+", help="model files, 'pid' or PID gains files")
    p.add_argument("--delays", default="0,1,2,3,4,6", help="comma-separated action delays in control steps")
    p.add_argument("--bound", type=float, default=0.9, help="survival rate a delay must keep")
    p.add_argument("--drone", default="cf21", help="drone for a PID (a model file names its own)")
    p.add_argument("--action", choices=["motors", "ctbr"], default="motors", help="what a PID's outputs drive")
    p.add_argument("--episodes", type=int, default=100)
    p.add_argument("--stage", type=int, default=5)
    p.add_argument("--starts", choices=["paper", "moderate"], default="moderate")
    p.add_argument("--engine", choices=["batched", "pybullet"], default="batched")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--warmup-steps", type=int, default=50)
    p.add_argument("--guide", default="pid")
    p.set_defaults(jitter=None, observation_delay=None, randomize=None)

    p = add(sub, "train", cmd_train, "train a controller (TD3BC+JSRL or a baseline) from a config")
    p.add_argument("--config", default="config/train/td3bc_jsrl.yaml")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--guide", default=None, help="override the config's guide: 'pid', a PID gains file (.yaml), 'none' or a guide ANN file")
    p.add_argument("--out", default=None, help="run directory (default runs/<name>_seed<S>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")

    p = add(sub, "export", cmd_export, "export a model file for use elsewhere: c = a C99 module for on-board "
            "flight (docs/onboard.md), nir = a NIR graph (docs/nir.md)")
    p.add_argument("model", help="model file (.safetensors)")
    p.add_argument("--format", choices=sorted(EXPORT_FORMATS), required=True,
                   help="c: PREFIX.h and PREFIX.c; nir: one HDF5 file")
    p.add_argument("--out", default=None, help="c: the directory to write to (created if missing); nir: the file "
                   "(default: the model's name with .nir)")
    p.add_argument("--name", default=None, metavar="PREFIX",
                   help="c: prefix of the file and symbol names (default: the model file's name)")
    p = add(sub, "import-nir", cmd_import_nir, "write the model file of a NIR graph that `snnctl export` wrote")
    p.add_argument("file", help="NIR file (.nir, HDF5)")
    p.add_argument("--out", required=True, help="model file to write (.safetensors)")

    p = add(sub, "crazyflie", cmd_crazyflie, "ask a running crazyflie_bridge to arm, disarm, take off, land, "
            "go_to (the drone's goal_pose) or stop the motors (emergency_stop), or print its status")
    p.add_argument("request", choices=["arm", "disarm", "takeoff", "land", "go_to", "emergency_stop", "status"])
    p.add_argument("--drone", default=None, help="one drone of the fleet (default: every drone)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the bridge")

    p = add(sub, "launch", cmd_launch, "run a ROS 2 YAML launch file (no ros2 launch needed)")
    p.add_argument("file", help="launch file name in launch/ or a path")
    p.add_argument("arguments", nargs="*", help="launch arguments name:=value")
    p.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    p.add_argument("--monitor", action="store_true", help="print the drones' positions every second")
    p.add_argument("--print", action="store_true", help="print the node commands and exit")
    return parser


def main(argv=None) -> int:
    from .config import ConfigError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, ValueError, KeyError, OSError) as exc:  # includes ModelFileError, a full disk
        message = str(exc)
        if args.json:
            print(json.dumps({"error": message}))
        else:
            print(f"snnctl: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
