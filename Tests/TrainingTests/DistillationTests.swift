import Data
import Distributed
import Kernels
import Layers
import Training
import XCTest

/// QAT without labels: a W4A4 student learns from its FP32 teacher's logits.
final class DistillationTests: XCTestCase {
    let communicator = SingleProcessCommunicator()

    /// Mean distillation loss of `student` on all of `images`.
    func distillationLoss(_ student: Network, teacher: Network, on images: ImageSet) -> Float {
        let pixels = FloatBuffer(capacity: images.count * images.sampleSize)
        images.gatherBatch(Array(0..<images.count)[...], into: pixels.pointer)
        let x = FeatureMap(data: pixels.pointer, channels: 1, batch: images.count, height: 8, width: 8)
        let target = teacher.forward(x, training: false)
        let result = softmaxDistillation(student: student.forward(x, training: false), teacher: target, temperature: 1,
                                         gradient: nil, gradientScale: 0)
        return result.loss
    }

    func testDistillationTrainsTheStudentTowardsTheTeacher() throws {
        let data = syntheticDataset()
        let teacher = tinyModel()
        _ = try Trainer(model: teacher, data: data, options: phase(epochs: 4), communicator: communicator,
                        log: RunLog(active: false, metricsPath: nil)).run { _ in }
        // A W4A4 student from another initialisation: far from its teacher.
        let student = tinyModel(seed: 2)
        quantize(student, data: data)
        let teacherBefore = snapshot(teacher)

        // Images only: the trainer never sees a label.
        let images = ImageSet(data)
        let before = distillationLoss(student, teacher: teacher, on: images)
        XCTAssertGreaterThan(before, 0.1, "the student should have something to learn")
        let report = try Trainer(model: student, images: images, distillation: Distillation(teacher: teacher),
                                 options: phase(epochs: 8), communicator: communicator,
                                 log: RunLog(active: false, metricsPath: nil)).run { _ in }
        let after = distillationLoss(student, teacher: teacher, on: images)
        XCTAssertEqual(report.steps, 8 * (96 / 16))
        // The loss (a KL divergence) is the measure. Argmax agreement is too
        // noisy on 96 images of a tiny teacher: a mere change of summation
        // order in conv's backward once moved it from 70 down to 64 while the
        // loss fell 25-fold.
        XCTAssertLessThan(after, before * 0.2, "distillation loss \(before) -> \(after)")
        XCTAssertEqual(snapshot(teacher), teacherBefore, "the teacher must not change")
    }

    func testDistillationRefusesAugmentation() {
        var options = phase(epochs: 1)
        options.augmentation.maxShift = 1
        let model = tinyModel()
        XCTAssertThrowsError(try Trainer(model: model, images: ImageSet(syntheticDataset()),
                                         distillation: Distillation(teacher: tinyModel()), options: options,
                                         communicator: communicator, log: RunLog(active: false, metricsPath: nil)))
    }
}
