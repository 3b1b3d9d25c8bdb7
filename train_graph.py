"""The training graph: the multi-scale loss, the optimizer update (weight decay, global-norm clip,
cosine learning rate), the fused fair step of three paths on one batch (the supernet's layers
routed by the cycle) with its optional in-place distillation from the largest path, one subnet's step
alone, and the training input behind feedable placeholders."""
import contextlib
import math

from tensorflow_quiet import tf

import fair
import fc2_pipeline
import supernet


def multiscale_loss(preds, flow_gt, weights):
    """sum over scales of weight * mean |pred - label|, the label area-resized to each scale
    (flow values unchanged: flow is in input-pixel units at every scale)."""
    def label_at(scale):
        size = preds[scale].shape[1:3]
        return flow_gt if size == flow_gt.shape[1:3] else tf.image.resize(flow_gt, size, method="area")
    return _weighted_l1(preds, label_at, weights)


def distillation_loss(preds, teacher_flows, weights):
    """multiscale_loss's form with a teacher's flows as the labels: sum over scales of weight *
    mean |pred - the teacher's flow at that scale| (each scale against the teacher's own
    prediction there, not its finest flow resized)."""
    return _weighted_l1(preds, lambda scale: teacher_flows[scale], weights)


def _weighted_l1(preds, label_at, weights):
    """sum over scales s of weights[s] * mean |preds[s] - label_at(s)| (each label built as its
    scale's term is)."""
    total = 0.0
    for scale, (pred, weight) in enumerate(zip(preds, weights)):
        total += weight * tf.reduce_mean(tf.abs(pred - label_at(scale)))
    return total


def cosine_learning_rate(cfg, global_step, total_steps):
    """Cosine decay from learning_rate at step 0 to 0 at total_steps."""
    progress = tf.minimum(tf.cast(global_step, tf.float32) / float(max(total_steps, 1)), 1.0)
    return cfg["learning_rate"] * 0.5 * (1.0 + tf.cos(math.pi * progress))


def build_update(cfg, data_loss, total_steps, mean_over_replicas=None):
    """One optimizer update of every trainable variable from `data_loss` plus weight decay:
    gradient, global-norm clip, cosine learning rate, Adam (or SGD). Returns the fetchable pieces.

    In a replica of a tf.distribute strategy (distribute.py), `mean_over_replicas` (a list of
    tensors -> their means over the replicas, one all-reduce) turns the replica's gradient and
    loss into the means over all replicas before the clip, so the clip sees the global gradient's
    norm and the optimizer applies the mean as it is (no second aggregation)."""
    variables = tf.compat.v1.trainable_variables()
    loss = data_loss + cfg["weight_decay"] * tf.add_n([tf.nn.l2_loss(k) for k in supernet.kernel_variables(variables)])
    grads = tf.gradients(loss, variables)
    if mean_over_replicas:
        *grads, loss = mean_over_replicas(grads + [loss])
    grad_norm = tf.linalg.global_norm(grads)
    clip = cfg["grad_clip_norm"]
    if clip > 0:
        grads, _ = tf.clip_by_global_norm(grads, clip, use_norm=grad_norm)
    global_step = tf.compat.v1.train.get_or_create_global_step()
    lr = cosine_learning_rate(cfg, global_step, total_steps)
    if cfg["optimizer"] == "adam":
        optimizer = tf.compat.v1.train.AdamOptimizer(lr, cfg["adam_beta1"], cfg["adam_beta2"], cfg["adam_epsilon"])
    else:
        optimizer = tf.compat.v1.train.GradientDescentOptimizer(lr)
    train_op = optimizer.apply_gradients(zip(grads, variables), global_step=global_step,
                                         skip_gradients_aggregation=bool(mean_over_replicas))
    return {"loss": loss, "lr": lr, "grad_norm": grad_norm, "train_op": train_op, "global_step": global_step,
            "clipped": grad_norm > clip if clip > 0 else tf.constant(False)}


def _select(index, tensors):
    """tensors[index] for a scalar int tensor `index`, without a copy (a switch_case of identities)."""
    return tf.switch_case(index, [(lambda tensor=tensor: tf.identity(tensor)) for tensor in tensors])


def _route(tensors, order, inverse, place):
    """[tensors[order[k]] for each k], `order` a permutation with inverse `inverse`; the selection
    of output k and of the gradient of input k are placed by `place(k)` (a context manager), the
    IdentityN that tf.custom_gradient puts on the outputs by the placer (on the first device). The
    gradient is routed back by the inverse with the same selection: no copies, and no switch_case
    gradient to build (the selections' own gradients would be most of the step's graph and add
    zeros to it)."""
    def select_each(index, candidates):
        selected = []
        for k in range(len(candidates)):
            with place(k):
                selected.append(_select(index[k], candidates))
        return selected

    def gradient(*upstream):
        # tf.gradients colocates a gradient with its forward op, here the routing's one IdentityN
        # (on the first device): each selection goes where `place` says instead.
        with tf.compat.v1.colocate_with(None, ignore_existing=True):
            return select_each(inverse, upstream)

    @tf.custom_gradient
    def route(*inputs):
        return select_each(order, inputs), gradient
    return route(*tensors)


def _column_permutation(arch_paths, column, name):
    """The options of a block's column of `arch_paths` ([P] int32, path p's option) and their
    inverse ([P], the path that chose option o), checked at run time to be a permutation."""
    options = arch_paths[:, column]
    every_option_once = tf.debugging.assert_equal(
        tf.sort(options), tf.range(tf.shape(options)[0]),
        message=f"arch_paths: block {name} must give every option to exactly one path")
    with tf.control_dependencies([every_option_once]):  # both: a forward pass may read either alone
        return tf.identity(options), tf.argsort(options)


def fair_cycle_flows(images, arch_paths, path_devices=None):
    """The forward passes of a fair cycle's paths, each choice block's options built once.

    images: [B, H, W, 6], one batch for every path. arch_paths: [P, blocks] int32 with P the
    options per block, each column a permutation (every option taken by exactly one path: a fair
    cycle; anything else fails at run time). Returns one list of flows per path, as build_flows.

    A choice block is built once per option, statically: option o runs on the input of the path
    that chose it, and its output goes back to that path (_route: tensors handed on, not copied).
    A fixed layer runs once per path, or once for all when every path reads the same tensor (E0
    and E1 read the images). The same mathematics as P dynamic build_flows, with no switch_case
    to differentiate and E0/E1 computed once. With `path_devices`, path p's fixed layers and every
    block's option p run on path_devices[p % N]; E0, E1, the variables and the routing on the first.
    """
    h, w = int(images.shape[1]), int(images.shape[2])
    supernet.check_input_size(h, w)
    paths = int(arch_paths.shape[0])
    column = {block: i for i, block in enumerate(supernet.SPACE.blocks)}

    def bn(x, scope, zero_gamma=False):
        return supernet.batch_norm(x, scope, "train", zero_gamma=zero_gamma)

    def on_device(p):
        """Path p's device, but a variable is created on the first (it may be first asked for by option p)."""
        if not path_devices:
            return contextlib.nullcontext()
        device = path_devices[p % len(path_devices)]
        return tf.compat.v1.device(lambda op: path_devices[0] if op.type == "VarHandleOp" else device)

    outputs, flows = {supernet.INPUT: [images] * paths}, [[] for _ in range(paths)]
    with tf.name_scope("supernet"):
        for layer in supernet.SPACE.layers:
            inputs = outputs[layer.input]
            shared = all(x is inputs[0] for x in inputs)
            if layer.options:
                options, chooser = _column_permutation(arch_paths, column[layer.name], layer.name)
                routed = inputs if shared else _route(inputs, chooser, options, on_device)
                ys = []
                for o in range(len(layer.options)):
                    with on_device(o):
                        ys.append(supernet.apply_layer(layer, routed[o], o, bn, h, w))
                ys = _route(ys, options, chooser, on_device)
            elif shared:
                ys = [supernet.apply_layer(layer, inputs[0], None, bn, h, w)] * paths
            else:
                ys = []
                for p in range(paths):
                    with on_device(p):
                        ys.append(supernet.apply_layer(layer, inputs[p], None, bn, h, w))
            if layer.op == "flow":
                for p in range(paths):
                    flows[p].append(supernet.accumulate(flows[p][-1], ys[p]) if flows[p] else ys[p])
            else:
                outputs[layer.name] = ys
    return flows


def build_train_step(cfg, images, flows, total_steps, path_devices=None):
    """The fused fair step: 3 paths on one batch, one gradient of their mean loss, one update.

    images [B, H, W, 6], flows [B, H, W, 2]. Returns a dict of tensors and ops; feed `arch_paths`
    ([3, 9] int32, one fair cycle: fair_cycle_flows) and run `train_op`. The gradient of
    the mean of the three path losses is exactly the mean of the three per-path gradients, and it
    is applied once. With several `path_devices` (device names), path p's fixed layers and option p
    of every block run on path_devices[p % N], forward and backward (tf.gradients keeps each
    gradient op on its forward op's device); the variables live on the first. Each path normalises
    with its own batch statistics, so the update is the same.
    """
    arch_paths = arch_paths_placeholder()
    terms = fair_step_terms(cfg, images, flows, arch_paths, path_devices)
    extra = {"distill": terms["distill"]} if "distill" in terms else {}
    return dict(build_update(cfg, terms["loss"], total_steps), arch_paths=arch_paths, **extra)


def arch_paths_placeholder():
    """The [paths, blocks] int32 placeholder a fair step's cycle is fed through."""
    return tf.compat.v1.placeholder(tf.int32, [fair.paths_per_cycle(), len(supernet.SPACE.blocks)], "arch_paths")


def fair_step_loss(cfg, images, flows, arch_paths, path_devices=None):
    """The mean of the fair cycle's path losses on one batch (see build_train_step)."""
    return fair_step_terms(cfg, images, flows, arch_paths, path_devices)["loss"]


def fair_step_terms(cfg, images, flows, arch_paths, path_devices=None):
    """{"loss": the mean of the fair cycle's path losses on one batch} and, with distill_weight > 0,
    "distill": the distillation part of that mean (distillation_terms, added to each path's loss).
    With distill_weight 0 nothing of distillation is built."""
    spread = path_devices if path_devices and len(path_devices) > 1 else None
    path_flows = fair_cycle_flows(images, arch_paths, spread)
    path_losses = [multiscale_loss(flows_p, flows, cfg["loss_weights"]) for flows_p in path_flows]
    terms = {}
    if cfg["distill_weight"] > 0:
        distill = distillation_terms(cfg, path_flows, largest_path_flows(images), arch_paths)
        path_losses = [loss + term for loss, term in zip(path_losses, distill)]
        terms["distill"] = tf.add_n(distill) / fair.paths_per_cycle()
    terms["loss"] = tf.add_n(path_losses) / fair.paths_per_cycle()
    return terms


def largest_arch():
    """The largest subnet: every block's last option (the search space's table orders each block's
    options lightest first: the deepest stages and the widest kernels)."""
    return supernet.uniform_arch(max(supernet.SPACE.num_options) - 1)


def largest_path_flows(images):
    """The teacher of in-place distillation: the largest subnet (largest_arch) on the step's batch,
    one more forward pass in training mode (batch statistics, as the paths normalise), its flows
    behind stop_gradient. No gradient reaches its layers, so it trains nothing: the options it
    shares with the cycle's paths are trained by those paths alone, once each, as strict fairness
    requires. Its BN layers leave their running statistics untouched, as in every training pass."""
    with tf.name_scope("teacher"):
        flows = supernet.build_flows(images, largest_arch(), mode="train")
        return [tf.stop_gradient(flow) for flow in flows]


def distillation_terms(cfg, path_flows, teacher_flows, arch_paths):
    """Each path's distillation term: distill_weight * distillation_loss(its flows, the teacher's),
    zero for a path that is the largest subnet itself (it is the teacher: it learns from the labels
    only)."""
    largest = tf.constant(largest_arch(), tf.int32)
    terms = []
    for p, flows_p in enumerate(path_flows):
        is_teacher = tf.reduce_all(tf.equal(arch_paths[p], largest))
        weight = tf.where(is_teacher, 0.0, cfg["distill_weight"])
        terms.append(weight * distillation_loss(flows_p, teacher_flows, cfg["loss_weights"]))
    return terms


def standalone_loss(cfg, images, flows, arch):
    """The loss of subnet `arch` alone: the static graph of its layers only."""
    return multiscale_loss(supernet.build_flows(images, arch, mode="train"), flows, cfg["loss_weights"])


def build_standalone_step(cfg, images, flows, total_steps, arch):
    """One subnet alone: the static graph of `arch` (only its layers exist), its loss and one update
    per step, with the supernet's variable names. `model_variables` (the subnet's weights and BN
    statistics, no optimizer state) are what `--init_from` restores from a supernet run."""
    loss = standalone_loss(cfg, images, flows, arch)
    model_variables = tf.compat.v1.global_variables()
    return dict(build_update(cfg, loss, total_steps), arch=arch, model_variables=model_variables)


def training_input(cfg, data, start_step):
    """Batches from the training split inside the current graph, from batch `start_step` on (each a
    pure function of the seed and its step), behind feedable placeholders (evaluation feeds its own
    batches through the same tensors)."""
    dataset = fc2_pipeline.make_dataset(data["train"], cfg["batch_size"], (cfg["input_h"], cfg["input_w"]), train=True,
                                        max_flow=cfg["max_flow"], seed=cfg["seed"], start_step=start_step)
    next_images, next_flows = tf.compat.v1.data.make_one_shot_iterator(dataset).get_next()
    h, w = cfg["input_h"], cfg["input_w"]
    images = tf.compat.v1.placeholder_with_default(next_images, [None, h, w, supernet.INPUT_CHANNELS], "images")
    flows = tf.compat.v1.placeholder_with_default(next_flows, [None, h, w, supernet.FLOW_CHANNELS], "flows")
    return images, flows
