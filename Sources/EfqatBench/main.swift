import Kernels
import Layers
import Foundation

setBLASThreads(1)
let batch = 128
let model = ResNet(.resnet20())
model.initialize(seed: 1)
let input = FloatBuffer(capacity: batch * 784)
var rng = SplitMix64(seed: 3)
for i in 0..<(batch * 784) { input.pointer[i] = rng.nextNormal() }
let labels = (0..<batch).map { Int32($0 % 10) }
let grad = FloatBuffer(capacity: 10 * batch)
let x = FeatureMap(data: input.pointer, channels: 1, batch: batch, height: 28, width: 28)

@MainActor func step() -> (Double, Double) {
    let t0 = Date()
    let logits = model.forward(x, training: true)
    _ = labels.withUnsafeBufferPointer { softmaxCrossEntropy(logits: logits, labels: $0.baseAddress!, gradient: grad.pointer, gradientScale: 1 / Float(batch)) }
    let t1 = Date()
    model.backward(FeatureMap(data: grad.pointer, channels: 10, batch: batch, height: 1, width: 1))
    let t2 = Date()
    return (t1.timeIntervalSince(t0), t2.timeIntervalSince(t1))
}
for chunk in [1 << 16, 1 << 18, 1 << 19, 1 << 20, 1 << 22] {
    model.workspace.chunkElements = chunk
    _ = step()
    var f = 0.0, b = 0.0
    for _ in 0..<5 { let (a, c) = step(); f += a; b += c }
    print("chunk \(chunk): forward \(f / 5 * 1000) ms, backward \(b / 5 * 1000) ms, \(Double(batch * 5) / (f + b)) img/s")
}
