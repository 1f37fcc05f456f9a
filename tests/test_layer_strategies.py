"""Layer strategies against hand-computed pairs, with their edge cases."""

from __future__ import annotations

import pytest

from distillc.compiler import layer_strategies as ls

GUIDE_EVENLY_32 = (3, 7, 11, 15, 19, 23, 27, 31)  # the guide's "cover full depth" row for Llama-8B


def same(indices):
    return tuple((i, i) for i in indices)


class TestDepthMaps:
    def test_proportional_equal_depths_is_identity(self):
        f = ls.proportional(32, 32)
        assert [f(s) for s in range(32)] == list(range(32))

    def test_proportional_last_layers_meet(self):
        assert ls.proportional(80, 32)(31) == 79
        assert ls.proportional(32, 24)(23) == 31

    def test_proportional_hand_values(self):
        # round((s+1) * 32 / 24) - 1: s=0 -> round(1.333)-1 = 0; s=1 -> round(2.667)-1 = 2; s=2 -> 4-1 = 3
        f = ls.proportional(32, 24)
        assert [f(s) for s in range(4)] == [0, 2, 3, 4]
        # halves round up: (s+1) * 3 / 2 for s=0 is 1.5 -> 2 -> teacher 1
        assert ls.proportional(3, 2)(0) == 1

    def test_kept_layers(self):
        assert ls.kept_layers(6, [1, 2]) == (0, 3, 4, 5)

    def test_kept_layers_rejects_out_of_range(self):
        with pytest.raises(ValueError):
            ls.kept_layers(4, [4])

    def test_pruned_map_goes_through_kept_layers(self):
        f = ls.depth_map(32, 30, [14, 15])
        assert [f(s) for s in (13, 14, 29)] == [13, 16, 31]


class TestFirstN:
    def test_maxtext_launcher_default(self):
        assert ls.first_n(8, 32, 32) == same(range(8))

    def test_count_larger_than_depth_takes_every_layer(self):
        assert ls.first_n(10, 4, 4) == same(range(4))

    def test_different_depths_map_proportionally(self):
        # student 2 layers (count clamped), teacher 4: round((s+1) * 2) - 1 -> 1, 3
        assert ls.first_n(3, 4, 2) == ((1, 0), (3, 1))

    def test_pruned_student_maps_through_kept_layers(self):
        # teacher 6 layers, layers 1 and 2 pruned: student 0,1,2 are teacher 0,3,4
        assert ls.first_n(3, 6, 4, [1, 2]) == ((0, 0), (3, 1), (4, 2))


class TestEvenlySpaced:
    def test_guide_values_for_32_layers(self):
        assert ls.evenly_spaced_indices(8, 32) == GUIDE_EVENLY_32
        assert ls.evenly_spaced(8, 32, 32) == same(GUIDE_EVENLY_32)

    def test_80_layers(self):
        assert ls.evenly_spaced_indices(8, 80) == (9, 19, 29, 39, 49, 59, 69, 79)

    def test_uneven_division_rounds_half_up(self):
        # c * 10 / 3 = 3.33, 6.67, 10 -> 3, 7, 10 -> indices 2, 6, 9
        assert ls.evenly_spaced_indices(3, 10) == (2, 6, 9)

    def test_count_larger_than_depth(self):
        assert ls.evenly_spaced_indices(9, 4) == (0, 1, 2, 3)

    def test_count_one_is_the_last_layer(self):
        assert ls.evenly_spaced_indices(1, 32) == (31,)

    def test_student_shallower_than_teacher(self):
        # student 16 layers: 1, 3, ..., 15; teacher 32: round((s+1)*2)-1 = 2s+1
        pairs = ls.evenly_spaced(8, 32, 16)
        assert pairs == tuple((2 * s + 1, s) for s in (1, 3, 5, 7, 9, 11, 13, 15))


class TestTopHeavy:
    def test_hand_values_32(self):
        # ceil(sqrt(j/8) * 32) - 1 for j = 1..8
        assert ls.top_heavy_indices(8, 32) == (11, 15, 19, 22, 25, 27, 29, 31)

    def test_denser_near_the_output(self):
        idx = ls.top_heavy_indices(8, 80)
        gaps = [b - a for a, b in zip(idx, idx[1:])]
        assert idx[-1] == 79 and gaps == sorted(gaps, reverse=True)

    def test_distinct_when_count_close_to_depth(self):
        idx = ls.top_heavy_indices(7, 8)
        assert len(set(idx)) == 7 and idx[-1] == 7 and min(idx) >= 0

    def test_count_equal_or_larger_than_depth_takes_every_layer(self):
        assert ls.top_heavy_indices(4, 4) == (0, 1, 2, 3)
        assert ls.top_heavy_indices(12, 4) == (0, 1, 2, 3)

    @pytest.mark.parametrize("depth", [1, 2, 5, 16, 33, 126])
    @pytest.mark.parametrize("count", [1, 2, 3, 8, 40])
    def test_always_valid(self, depth, count):
        idx = ls.top_heavy_indices(count, depth)
        assert len(idx) == min(count, depth) and idx == tuple(sorted(set(idx)))
        assert idx[0] >= 0 and idx[-1] == depth - 1


class TestStraddlePruned:
    def test_one_block_in_the_middle(self):
        # pruned 14, 15 of 32: teacher 13 -> student 13, teacher 16 -> student 14
        assert ls.straddle_pruned(32, [14, 15]) == ((13, 13), (16, 14))

    def test_block_at_the_start(self):
        assert ls.straddle_pruned(8, [0, 1]) == ((2, 0),)

    def test_block_at_the_end(self):
        assert ls.straddle_pruned(8, [6, 7]) == ((5, 5),)

    def test_two_blocks(self):
        # pruned 2 and 5,6 of 10: before/after block [2]: 1->1, 3->2; block [5,6]: 4->3, 7->4
        assert ls.straddle_pruned(10, [5, 2, 6]) == ((1, 1), (3, 2), (4, 3), (7, 4))

    def test_layer_between_two_blocks_appears_once(self):
        # pruned 2 and 4 of 8: teacher 3 straddles both blocks
        assert ls.straddle_pruned(8, [2, 4]) == ((1, 1), (3, 2), (5, 3))

    def test_adjacent_pruned_layers_form_one_block(self):
        assert ls.pruned_blocks([3, 4, 5, 9]) == ((3, 5), (9, 9))
        assert ls.straddle_pruned(12, [3, 4, 5]) == ((2, 2), (6, 3))

    def test_unsorted_and_duplicated_input(self):
        assert ls.straddle_pruned(32, [15, 14, 14]) == ((13, 13), (16, 14))

    def test_everything_but_one_layer(self):
        assert ls.straddle_pruned(3, [0, 2]) == ((1, 0),)


class TestExplicit:
    def test_indices_are_the_same_on_both_sides(self):
        assert ls.explicit(32, 32, indices=[7, 3, 3]) == ((3, 3), (7, 7))

    def test_pairs_as_given(self):
        assert ls.explicit(32, 30, pairs=[(16, 14), (13, 13)]) == ((13, 13), (16, 14))

    def test_out_of_range_is_a_precondition(self):
        with pytest.raises(ValueError):
            ls.explicit(4, 4, indices=[4])


def test_resolve_layers_dispatch():
    from distillc.compiler.spec import EvenlySpaced, StraddlePruned

    assert ls.resolve_layers(None, 32, 32) == ()
    assert ls.resolve_layers(EvenlySpaced(strategy="evenly_spaced", count=8), 32, 32) == same(GUIDE_EVENLY_32)
    assert ls.resolve_layers(StraddlePruned(strategy="straddle_pruned"), 32, 30, (14, 15)) == ((13, 13), (16, 14))
