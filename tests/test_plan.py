import pytest

from layerdiff import PlanError, PrecisionPlan


def test_plan_is_a_canonical_hashable_value():
    spelled = PrecisionPlan("int8", {"conv1": "int8", "conv2": "fp32"})
    plain = PrecisionPlan.uniform("int8", pin_fp32={"conv2"})
    assert spelled == plain and hash(spelled) == hash(plain)
    assert spelled.overrides == {"conv2": "fp32"}  # the override equal to the default is no override
    assert len({spelled, plain, PrecisionPlan("int8")}) == 2
    assert PrecisionPlan("int8", {"a": "fp32", "b": "fp32"}) == PrecisionPlan("int8", {"b": "fp32", "a": "fp32"})
    assert PrecisionPlan("fp16") != PrecisionPlan("int8")


def test_plan_reads_as_the_override_or_the_default():
    plan = PrecisionPlan.uniform("fp16", pin_fp32={"a"})
    assert plan.precision_of("a") == "fp32" and plan.precision_of("b") == "fp16"
    assert plan.pinned == {"a"} and plan.precisions == {"fp16", "fp32"}
    assert plan.with_pins({"b"}) == PrecisionPlan.uniform("fp16", pin_fp32={"a", "b"})
    assert PrecisionPlan("fp32", {"x": "int8"}).pinned == frozenset()  # nothing is pinned against fp32


def test_plan_json_round_trip():
    plan = PrecisionPlan("int8", {"conv2": "fp32", "fc": "fp16"})
    d = plan.to_dict()
    assert d == {"default": "int8", "overrides": {"conv2": "fp32", "fc": "fp16"}}
    assert PrecisionPlan.from_dict(d) == plan
    assert PrecisionPlan.from_dict({"default": "fp16"}) == PrecisionPlan("fp16")


@pytest.mark.parametrize("make, message", [
    (lambda: PrecisionPlan("int3"), "unknown precision 'int3' as the plan's default; known: fp32, fp16, bf16, int8"),
    (lambda: PrecisionPlan("int8", {"conv1": "fp64"}),
     "unknown precision 'fp64' for node 'conv1'; known: fp32, fp16, bf16, int8"),
    (lambda: PrecisionPlan.from_dict(["int8"]),
     'a precision plan is {"default": PRECISION, "overrides": {NODE: PRECISION}}; got list'),
    (lambda: PrecisionPlan.from_dict({"default": "int8", "overrides": {"": "fp32"}}),
     "a plan override names '', which is not a node name"),
])
def test_bad_plans_are_plan_errors(make, message):
    with pytest.raises(PlanError) as err:
        make()
    assert str(err.value) == message


def test_plan_names_nodes_the_model_lacks():
    plan = PrecisionPlan.uniform("int8", pin_fp32={"conv2", "nope", "gone"})
    plan.check(["conv1", "conv2", "nope", "gone"])
    with pytest.raises(PlanError) as err:
        plan.check(["conv1", "conv2"])
    assert str(err.value) == ("the plan names 2 node(s) the model does not have: gone, nope; node names are those in "
                              "the report's 'name' field")
