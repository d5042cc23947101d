/* SPDX-License-Identifier: MIT */
/*
 * Advice per range (hmm_advise, hmm_advice_get): storage (split, merge,
 * forget), preferred location and accessed-by as device faults see them,
 * and discard.
 */
#include "common.h"

#define NP 64

static struct hmm_advice_info advice_at(const void *p)
{
	struct hmm_advice_info ai;

	cr_assert_eq(hmm_advice_get(p, &ai), 0);
	return ai;
}

Test(advice, split_merge_and_forget, .timeout = T_SHORT)
{
	hmm_device_t *a, *b;
	char *p;

	need_hmm();
	a = open_sim(0);
	b = open_sim(0);
	p = map_adopt(NP * PG);
	cr_assert_eq(advice_at(p).preferred, HMM_LOC_UNMANAGED);
	cr_assert_eq(hmm_advise(p + 8 * PG, 16 * PG,
				HMM_ADVISE_PREFERRED_LOCATION, a),
		     0);
	cr_assert_eq(hmm_advise(p + 16 * PG, 16 * PG,
				HMM_ADVISE_PREFERRED_LOCATION, NULL),
		     0);
	cr_assert_eq(hmm_advise(p, NP * PG, HMM_ADVISE_ACCESSED_BY, b), 0);
	for (size_t i = 0; i < NP; i++) {
		struct hmm_advice_info ai = advice_at(p + i * PG);
		int want = i < 8 || i >= 32 ? HMM_LOC_UNMANAGED
			   : i < 16	     ? HMM_LOC_DEVICE
					     : HMM_LOC_SYSTEM;
		cr_assert_eq(ai.preferred, want, "page %zu", i);
		if (want == HMM_LOC_DEVICE)
			cr_assert_eq(ai.preferred_dev, a);
		cr_assert_eq(ai.accessed_by, 1ULL << hmm_device_id(b),
			     "page %zu", i);
	}
	/* Unset in the middle of a segment: it splits; set again: merged. */
	cr_assert_eq(hmm_advise(p + 10 * PG, 2 * PG,
				HMM_ADVISE_UNSET_PREFERRED_LOCATION, NULL),
		     0);
	cr_assert_eq(advice_at(p + 10 * PG).preferred, HMM_LOC_UNMANAGED);
	cr_assert_eq(advice_at(p + 12 * PG).preferred, HMM_LOC_DEVICE);
	cr_assert_eq(hmm_advise(p + 10 * PG, 2 * PG,
				HMM_ADVISE_PREFERRED_LOCATION, a),
		     0);
	cr_assert_eq(advice_at(p + 10 * PG).preferred_dev, a);
	cr_assert_eq(hmm_advise(p, NP * PG, HMM_ADVISE_UNSET_ACCESSED_BY, b),
		     0);
	cr_assert_eq(advice_at(p).accessed_by, 0);

	/* A closed device's advice goes with it. */
	cr_assert_eq(hmm_device_close(a), 0);
	cr_assert_eq(advice_at(p + 8 * PG).preferred, HMM_LOC_UNMANAGED);
	cr_assert_eq(advice_at(p + 16 * PG).preferred, HMM_LOC_SYSTEM);
	/* Released memory's advice goes with it. */
	cr_assert_eq(hmm_range_release(p + 16 * PG, 8 * PG), 0);
	cr_assert_eq(advice_at(p + 16 * PG).preferred, HMM_LOC_UNMANAGED);
	cr_assert_eq(advice_at(p + 24 * PG).preferred, HMM_LOC_SYSTEM);
	cr_assert_eq(munmap(p + 24 * PG, 8 * PG), 0);
	cr_assert_eq(advice_at(p + 24 * PG).preferred, HMM_LOC_UNMANAGED);
}

Test(advice, bad_input_changes_nothing, .timeout = T_SHORT)
{
	hmm_device_t *dev;
	char *p, *u;
	int fd;

	need_hmm();
	dev = open_sim(0);
	p = map_adopt(NP * PG);
	u = map_anon(NP * PG);
	cr_assert_eq(hmm_advise(p + 1, PG, HMM_ADVISE_PREFERRED_LOCATION, dev),
		     -EINVAL);
	cr_assert_eq(hmm_advise(p, 0, HMM_ADVISE_PREFERRED_LOCATION, dev),
		     -EINVAL);
	cr_assert_eq(hmm_advise(p, PG, 0, dev), -EINVAL);
	cr_assert_eq(hmm_advise(p, PG, 99, dev), -EINVAL);
	cr_assert_eq(hmm_advise(p, PG, HMM_ADVISE_ACCESSED_BY, NULL), -EINVAL);
	cr_assert_eq(hmm_advise(p, PG, HMM_ADVISE_UNSET_ACCESSED_BY, NULL),
		     -EINVAL);
	cr_assert_eq(hmm_advise(p, PG, HMM_ADVISE_UNSET_PREFERRED_LOCATION,
				dev),
		     -EINVAL);
	cr_assert_eq(hmm_advise(p, PG, HMM_ADVISE_DISCARD, dev), -EINVAL);
	cr_assert_eq(hmm_advise(u, PG, HMM_ADVISE_PREFERRED_LOCATION, dev),
		     -ENOENT);
	cr_assert_eq(hmm_advise(p, 2 * NP * PG, HMM_ADVISE_PREFERRED_LOCATION,
				dev),
		     -ENOENT, "half managed");
	cr_assert_eq(hmm_advise(u, PG, HMM_ADVISE_DISCARD, NULL), -ENOENT);
	cr_assert_eq(hmm_advice_get(p, NULL), -EINVAL);
	cr_assert_eq(advice_at(p).preferred, HMM_LOC_UNMANAGED,
		     "a refused call left advice");
	/* File-backed memory cannot be discarded. */
	fd = memfd_create("advice", MFD_CLOEXEC);
	cr_assert_geq(fd, 0);
	cr_assert_eq(ftruncate(fd, NP * PG), 0);
	char *f = test_map(NP * PG, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	cr_assert_neq(f, MAP_FAILED);
	cr_assert_eq(hmm_file_adopt(f, NP * PG, fd, 0), 0);
	cr_assert_eq(hmm_advise(f, NP * PG, HMM_ADVISE_DISCARD, NULL),
		     -EOPNOTSUPP);
	cr_assert_eq(hmm_device_close(dev), 0);
	cr_assert_eq(hmm_advise(p, PG, HMM_ADVISE_PREFERRED_LOCATION, dev),
		     -ENODEV);
	cr_assert_eq(hmm_device_id(NULL), -EINVAL);
}

/* A device fault by the preferred device moves the pages to it; other
 * devices, and the preferred one when it only accesses, map them where
 * they are. */
Test(advice, preferred_location_moves_on_device_faults, .timeout = T_SHORT)
{
	hmm_device_t *a, *b;
	uint64_t m0;
	char *p;

	need_hmm();
	a = open_sim(0);
	b = open_sim(0);
	p = map_adopt(NP * PG);
	fill_pattern(p, NP * PG, 41);

	/* No advice: a device read leaves pages in system memory. */
	assert_dev_pattern(a, p, 0, NP, 41);
	assert_all_loc(p, NP * PG, HMM_LOC_SYSTEM, NULL);

	cr_assert_eq(hmm_advise(p, 32 * PG, HMM_ADVISE_PREFERRED_LOCATION, a),
		     0);
	m0 = stat_of("advice_migrations");
	/* b is not the preferred device: nothing moves. */
	assert_dev_pattern(b, p, 0, NP, 41);
	assert_all_loc(p, NP * PG, HMM_LOC_SYSTEM, NULL);
	/* a: its first 32 pages move to it, the others stay. */
	assert_dev_pattern(a, p, 16, 32, 41); /* 16 advised, 16 not */
	assert_all_loc(p + 16 * PG, 16 * PG, HMM_LOC_DEVICE, a);
	assert_all_loc(p + 32 * PG, 32 * PG, HMM_LOC_SYSTEM, NULL);
	cr_assert_eq(stat_of("advice_migrations") - m0, 16);
	assert_dev_pattern(a, p, 0, 16, 41);
	assert_all_loc(p, 32 * PG, HMM_LOC_DEVICE, a);
	/* CPU access brings them home; the next device fault moves them
	 * again. */
	assert_pattern(p, NP * PG, 41);
	assert_all_loc(p, NP * PG, HMM_LOC_SYSTEM, NULL);
	assert_dev_pattern(a, p, 0, NP, 41);
	assert_all_loc(p, 32 * PG, HMM_LOC_DEVICE, a);

	/* accessed-by a: a's faults map pages where they are. */
	assert_pattern(p, NP * PG, 41);
	cr_assert_eq(hmm_advise(p, 32 * PG, HMM_ADVISE_ACCESSED_BY, a), 0);
	assert_dev_pattern(a, p, 0, NP, 41);
	assert_all_loc(p, NP * PG, HMM_LOC_SYSTEM, NULL);

	/* Device memory full: pages that cannot move are used in place. */
	cr_assert_eq(hmm_advise(p, 32 * PG, HMM_ADVISE_UNSET_ACCESSED_BY, a),
		     0);
	hmm_device_t *small = open_sim(8 * PG);
	cr_assert_eq(hmm_advise(p, NP * PG, HMM_ADVISE_PREFERRED_LOCATION,
				small),
		     0);
	assert_dev_pattern(small, p, 0, NP, 41);
	cr_assert_leq(count_loc(p, NP * PG, HMM_LOC_DEVICE), 8);
	assert_pattern(p, NP * PG, 41);
}

Test(advice, discard_drops_without_copying, .timeout = T_SHORT)
{
	hmm_device_t *dev;
	uint64_t back0;
	char *p, *s;

	need_hmm();
	dev = open_sim(0);
	p = map_adopt(NP * PG);
	fill_pattern(p, NP * PG, 8);
	cr_assert_eq(hmm_migrate(p, NP * PG, dev, 0), NP);
	back0 = stat_of("pages_to_system");
	cr_assert_eq(hmm_advise(p, 32 * PG, HMM_ADVISE_DISCARD, NULL), 0);
	cr_assert_eq(stat_of("pages_to_system"), back0,
		     "discarded pages were copied back");
	assert_zero(p, 32 * PG);
	cr_assert_eq(pattern_mismatch(p + 32 * PG, 32 * PG, 8,
				      32 * WORDS_PER_PAGE),
		     -1, "the other half changed");

	/* Shared memory from hmm_mem_alloc too. */
	s = alloc_managed(NP * PG);
	fill_pattern(s, NP * PG, 12);
	cr_assert_eq(hmm_migrate(s, NP * PG, dev, 0), NP);
	cr_assert_eq(hmm_advise(s, NP * PG, HMM_ADVISE_DISCARD, NULL), 0);
	assert_zero(s, NP * PG);
	size_t used = wait_dev_used(dev, 0); /* p's half came home too */
	cr_assert_eq(used, 0,
		     "%zu device pages in use: the discarded pages' device "
		     "memory was not freed", used);
}

/*
 * Thrashing control: pages that go to their preferred device and are
 * pulled back by the CPU three times in a row stay in system memory (the
 * device maps them there) until the pin runs out; with the control off
 * they move every time.
 */
Test(advice, ping_pong_pins_then_releases, .timeout = T_SHORT)
{
	hmm_device_t *a;
	uint64_t pins0;
	char *p;
	int round;

	need_hmm();
	cr_assert_eq(hmm_option_set("THRASH_COUNT", 3), 0);
	cr_assert_eq(hmm_option_set("THRASH_PIN_MS", 300), 0);
	a = open_sim(0);
	p = map_adopt(NP * PG);
	fill_pattern(p, NP * PG, 13);
	cr_assert_eq(hmm_advise(p, NP * PG, HMM_ADVISE_PREFERRED_LOCATION, a),
		     0);
	pins0 = stat_of("thrash_pins");
	for (round = 1; round <= 3; round++) {
		assert_dev_pattern(a, p, 0, NP, 13);
		assert_all_loc(p, NP * PG, HMM_LOC_DEVICE, a);
		assert_pattern(p, NP * PG, 13); /* the CPU pulls them back */
	}
	/* The fourth move would be the third ping-pong: pinned instead. */
	assert_dev_pattern(a, p, 0, NP, 13);
	assert_all_loc(p, NP * PG, HMM_LOC_SYSTEM, NULL);
	cr_assert_eq(stat_of("thrash_pins") - pins0, 1);
	cr_assert_gt(stat_of("thrash_remote_faults"), 0);
	/* Still pinned: devices keep mapping it in system memory. */
	assert_pattern(p, NP * PG, 13);
	assert_dev_pattern(a, p, 0, NP, 13);
	assert_all_loc(p, NP * PG, HMM_LOC_SYSTEM, NULL);
	/* The pin runs out: moves resume at the device's next fault there
	 * (the device keeps its translations of the pinned pages until the
	 * CPU side changes; advice given again makes it fault). */
	usleep(400 * 1000);
	assert_pattern(p, NP * PG, 13);
	cr_assert_eq(hmm_advise(p, NP * PG, HMM_ADVISE_PREFERRED_LOCATION, a),
		     0);
	assert_dev_pattern(a, p, 0, NP, 13);
	assert_all_loc(p, NP * PG, HMM_LOC_DEVICE, a);

	/* Control off: every round moves. */
	cr_assert_eq(hmm_option_set("THRASH_COUNT", 0), 0);
	for (round = 0; round < 6; round++) {
		assert_pattern(p, NP * PG, 13);
		assert_dev_pattern(a, p, 0, NP, 13);
		assert_all_loc(p, NP * PG, HMM_LOC_DEVICE, a);
	}
	cr_assert_eq(stat_of("thrash_pins") - pins0, 1);
}

/*
 * Ping-pong between two devices: the pages' preferred location is device
 * A, and device B reads them too.  Each of B's reads brings them home
 * (through the CPU), each of A's moves them back: after three such round
 * trips the block stays in system memory, where both devices map it.
 */
Test(advice, ping_pong_between_devices_pins, .timeout = T_SHORT)
{
	hmm_device_t *a, *b;
	uint64_t pins0, moved0;
	char *p;

	need_hmm();
	cr_assert_eq(hmm_option_set("THRASH_COUNT", 3), 0);
	cr_assert_eq(hmm_option_set("THRASH_PIN_MS", 5000), 0);
	a = open_sim(0);
	b = open_sim(0);
	p = map_adopt(NP * PG);
	fill_pattern(p, NP * PG, 14);
	cr_assert_eq(hmm_advise(p, NP * PG, HMM_ADVISE_PREFERRED_LOCATION, a),
		     0);
	pins0 = stat_of("thrash_pins");
	for (int round = 1; round <= 3; round++) {
		assert_dev_pattern(a, p, 0, NP, 14);
		assert_all_loc(p, NP * PG, HMM_LOC_DEVICE, a);
		assert_dev_pattern(b, p, 0, NP, 14); /* home, through the CPU */
		settle(p, NP * PG);
		assert_all_loc(p, NP * PG, HMM_LOC_SYSTEM, NULL);
	}
	moved0 = stat_of("advice_migrations");
	assert_dev_pattern(a, p, 0, NP, 14);
	assert_all_loc(p, NP * PG, HMM_LOC_SYSTEM, NULL);
	cr_assert_eq(stat_of("thrash_pins") - pins0, 1);
	cr_assert_eq(stat_of("advice_migrations"), moved0,
		     "a pinned block moved");
	/* Pinned: both devices read it in system memory, nothing moves. */
	for (int round = 0; round < 3; round++) {
		assert_dev_pattern(b, p, 0, NP, 14);
		assert_dev_pattern(a, p, 0, NP, 14);
	}
	assert_all_loc(p, NP * PG, HMM_LOC_SYSTEM, NULL);
	cr_assert_eq(stat_of("advice_migrations"), moved0);
}

/*
 * The throttle: once a block has ping-ponged, its next move waits
 * HMM_THRASH_THROTTLE_MS after the previous one; device faults in between
 * map it in system memory.  After the wait it moves again.
 */
Test(advice, ping_pong_throttled_then_moves, .timeout = T_SHORT)
{
	hmm_device_t *a;
	uint64_t thr0;
	char *p;

	need_hmm();
	cr_assert_eq(hmm_option_set("THRASH_COUNT", 10), 0);
	cr_assert_eq(hmm_option_set("THRASH_THROTTLE_MS", 300), 0);
	a = open_sim(0);
	p = map_adopt(NP * PG);
	fill_pattern(p, NP * PG, 15);
	cr_assert_eq(hmm_advise(p, NP * PG, HMM_ADVISE_PREFERRED_LOCATION, a),
		     0);
	thr0 = stat_of("thrash_throttled");
	assert_dev_pattern(a, p, 0, NP, 15);
	assert_all_loc(p, NP * PG, HMM_LOC_DEVICE, a);
	assert_pattern(p, NP * PG, 15); /* back: a ping-pong */
	settle(p, NP * PG);
	/* Right away: held back, read in system memory. */
	assert_dev_pattern(a, p, 0, NP, 15);
	assert_all_loc(p, NP * PG, HMM_LOC_SYSTEM, NULL);
	cr_assert_gt(stat_of("thrash_throttled"), thr0);
	/* After the throttle: it moves (advice given again makes the device
	 * fault, as it keeps its translations of system pages). */
	usleep(350 * 1000);
	cr_assert_eq(hmm_advise(p, NP * PG, HMM_ADVISE_PREFERRED_LOCATION, a),
		     0);
	assert_dev_pattern(a, p, 0, NP, 15);
	assert_all_loc(p, NP * PG, HMM_LOC_DEVICE, a);
	cr_assert_eq(stat_of("thrash_pins"), 0);
}
