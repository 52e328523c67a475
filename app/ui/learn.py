"""The Learn tab: a plain explanation of KD and InDistill for a workshop audience."""

DIAGRAM = """
<svg width="760" height="250" viewBox="0 0 760 250" xmlns="http://www.w3.org/2000/svg" style="max-width:100%;height:auto;font-family:sans-serif">
  <style>.t{font-size:13px}.s{font-size:11px;fill:#374151}</style>
  <text x="10" y="20" class="t" font-weight="bold">Teacher (big)</text>
  <rect x="10" y="30" width="60" height="90" fill="#9ca3af"/><rect x="80" y="40" width="70" height="70" fill="#9ca3af"/>
  <rect x="160" y="50" width="80" height="50" fill="#9ca3af"/>
  <text x="10" y="140" class="s">layer 1</text><text x="80" y="140" class="s">layer 2</text><text x="160" y="140" class="s">layer 3</text>
  <text x="270" y="20" class="t" font-weight="bold">① pruned teacher</text>
  <rect x="270" y="30" width="30" height="90" fill="#10b981"/><rect x="310" y="40" width="35" height="70" fill="#10b981"/>
  <rect x="355" y="50" width="40" height="50" fill="#10b981"/>
  <text x="270" y="140" class="s">largest-L1 filters kept</text>
  <text x="500" y="20" class="t" font-weight="bold">Student (small)</text>
  <rect x="500" y="30" width="30" height="90" fill="#3b82f6"/><rect x="540" y="40" width="35" height="70" fill="#3b82f6"/>
  <rect x="585" y="50" width="40" height="50" fill="#3b82f6"/>
  <text x="500" y="140" class="s">matched layer by layer, no adapter</text>
  <text x="420" y="80" class="t">⇢</text>
  <text x="10" y="180" class="t" font-weight="bold">② warm-up curriculum:</text>
  <rect x="170" y="166" width="90" height="20" fill="#a7f3d0"/><text x="178" y="181" class="s">layer 1 (a+b)</text>
  <rect x="262" y="166" width="120" height="20" fill="#a7f3d0"/><text x="270" y="181" class="s">layer 2 (a+2b)</text>
  <rect x="384" y="166" width="150" height="20" fill="#a7f3d0"/><text x="392" y="181" class="s">layer 3 (a+3b)</text>
  <rect x="536" y="166" width="80" height="20" fill="#fde68a"/><text x="542" y="181" class="s">embedding</text>
  <text x="10" y="225" class="t" font-weight="bold">③ then ordinary KD:</text>
  <rect x="170" y="211" width="446" height="20" fill="#bfdbfe"/><text x="180" y="226" class="s">KD loss (Hinton, PKT, FitNets, AT, RKD, DKD) + cross-entropy</text>
</svg>
"""

LEARN_MD = f"""
## Knowledge distillation in one minute

A **teacher** network is accurate but big and slow. A **student** is small and fast but,
trained alone on the labels (the *baseline*), less accurate. **Knowledge distillation (KD)**
trains the student to imitate the teacher as well: to match its softened class
probabilities (Hinton KD), or the geometry of its embeddings (PKT, RKD), or its
intermediate feature maps (FitNets, attention transfer). The student then usually beats
the baseline at the same size and speed.

## What InDistill adds

Feature maps are hard to match when the teacher is much wider than the student. InDistill
(Sarridis et al., WACV 2025) adds a **warm-up** before ordinary KD:

{DIAGRAM}

1. **Prune** each teacher layer down to the student's width, keeping the channels whose
   filters have the largest L1 norm. Now teacher and student feature maps have the same
   shape and can be compared directly — no extra adapter layers to train.
2. **Curriculum**: the student learns to reproduce the pruned teacher features one layer
   at a time, shallow to deep. Layer *l* gets *S_l = a + b·l* epochs, so deeper (harder)
   layers get more time. Then the embedding layer is matched with a probabilistic
   (PKT-style) loss.
3. **Then ordinary KD** plus cross-entropy, exactly as for the KD student.

When teacher and student are too different (different numbers of stages, or a huge
width ratio), an **auxiliary teacher** — the student's architecture made wider — is first
distilled from the teacher, and pruned instead.

## What the studies in this app show (CIFAR-10, JPEG copy)

- **At a short budget the warm-up costs more than it gives.** The `cpu` study (15 epochs on 10,000
  images, the warm-up taking 9 of them, 5 seeds): KD beats the baseline, but InDistill + KD is 6–7
  points *below* KD, and every warm-up length of its a × b grid is below KD alone at the same total.
  Open `cpu-cnn` or `cpu-resnet` in the results library to see it.
- **At the authors' own scale, by their procedure, the warm-up comes out ahead — marginally.** The
  `reference` study runs their procedure exactly, from their own auxiliary teacher, on all 50,000
  images for 70 epochs, with the control the paper lacks: PKT alone for the same 70 epochs. Over five
  seeds InDistill + PKT is ahead of PKT alone by +0.66 points of retrieval mAP (95 % interval +0.07 to
  +1.26; p ≈ 0.04) — against the 12.5 points PKT itself gains over plain cross-entropy. That is a
  marginal result: one of the five seeds is a tie (+0.05), and measured with Euclidean distances the
  difference is within noise. Open `reference-pkt` in the results library.
- **By this app's own recipe, even at 70 epochs, no gain is seen.** With Hinton KD + cross-entropy and
  SGD (the `studio` procedure), InDistill + KD is 0.9 points of mAP and 0.4 points of accuracy *below*
  KD alone — within noise (`reference-studio`, three seeds), and with an interval (−2.5 to +0.8) wide
  enough to hold the reference procedure's +0.66: this study does not show that the two procedures
  differ. They differ in seven things at once (optimizer, schedule, stage-2 loss, cross-entropy, the
  embedding segment, how the pruned teacher's targets are made, how often the optimizer is re-created)
  and no experiment here separates them.
  The feature-map error suggests a reason, a hypothesis not tested: under the studio procedure stage
  2's SGD (learning rate 0.05) moves the student away from the matched features within about a dozen
  epochs, while under the reference's Adam (1e-3) the match stays far closer to the end (each
  procedure's error is measured against its own targets). To see the method as its authors ran it,
  choose the `reference-cifar10` preset (the full CIFAR-10 download) or open the shipped runs.
- **What a fair comparison means here**: every arm gets the same number of epochs, the warm-up
  included, and differences come with an interval; "within noise" is a result too.

## How to read the app

- **Setup**: pick the pair; the verdict says what will be pruned or why it cannot work.
- **Distill**: the schedule chart redraws as you move *a* and *b*.
- **Train**: live losses (curriculum phases shaded) and accuracy per epoch.
- **Pruning**: which channels were kept, and what the feature maps look like.
- **Compare**: accuracy, retrieval, size, FLOPs and latency side by side. A fair comparison
  gives the baseline and KD students as many epochs as InDistill's warm-up plus KD
  (*equal-epoch control*), so gains are not just longer training. Each figure comes with a
  95 % interval in brackets: the range the true value is likely in, given how many test images
  (and seeds) were used — two models whose intervals overlap widely may not really differ. The
  paired differences below the table say it plainly: **better** or **worse** only when the whole
  interval of the difference lies on one side of zero, otherwise **within noise**.
- **Retrieval**: upload a picture; each model finds the most similar training images.
- **Information flow**: how much each layer "knows" about the labels, epoch by epoch.
"""
