"""Every epoch draws its own order, through the hook Lightning calls before each epoch."""

from lightning.fabric.utilities.data import _set_sampler_epoch

from prefalign.data.sampling import RandomBatchSampler, ResumableLoader


def test_lightning_sets_the_epoch_of_the_batch_sampler():
    sampler = RandomBatchSampler(12, 3, seed=5)
    loader = ResumableLoader(list(range(12)), batch_sampler=sampler, collate_fn=list)
    first = list(loader)
    _set_sampler_epoch(loader, 1)  # what Lightning's fit loop calls before every epoch
    assert sampler.epoch == 1
    second = list(loader)
    assert sorted(sum(first, [])) == sorted(sum(second, [])) == list(range(12))
    assert first != second  # reseeded from seed + epoch, not the first epoch again
    _set_sampler_epoch(loader, 0)
    assert list(loader) == first
