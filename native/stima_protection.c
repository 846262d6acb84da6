/*
 * stima_protection.c - protection elements and the per-breaker trip / reclose logic.
 *
 * The semantics are specified by the Python reference (gateway/protection/reference.py); the
 * two are kept operation-for-operation alike so that they produce the same events at the same
 * steps. Memory policy: ProtCore_create allocates once; nothing else allocates.
 */
#include "stima_protection.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    ProtElementSettings s;
    ProtElementState st;
    int32_t was_good[3];   /* previous sample of the slot was good: integrate over dt */
    int32_t good_now[3];   /* this step's sample of the slot was good */
} Element;

typedef struct {
    ProtRelaySettings s;
    ProtRelayState st;
    int32_t configured;
    int32_t operated_count;  /* (element, slot) pairs operated after this step's update */
    int32_t operating_good;  /* of which the sample was good on this step */
    int32_t picked_slots;    /* (element, slot) pairs of the relay picked up now; kept up to
                                date on every pickup and dropout, so no step has to count */
    int32_t dropped;         /* a slot of the relay dropped out on this step */
} Relay;

struct sProtCore {
    int32_t relay_count;
    int32_t element_capacity;
    int32_t element_count;
    int32_t started;
    double last_now;
    Relay* relays;
    Element* elements;
};

typedef struct {
    double k, alpha, c, reset_tr;
} CurveConstants;

/* IEC 60255-151 / IEEE C37.112 constants (reference sheet section 1.1). */
static const CurveConstants CURVES[7] = {
    {0.14, 0.02, 0.0, 0.0},      /* IEC SI */
    {13.5, 1.0, 0.0, 0.0},       /* IEC VI */
    {80.0, 2.0, 0.0, 0.0},       /* IEC EI */
    {120.0, 1.0, 0.0, 0.0},      /* long-time inverse */
    {0.0515, 0.02, 0.114, 4.85}, /* IEEE MI */
    {19.61, 2.0, 0.491, 21.6},   /* IEEE VI */
    {28.2, 2.0, 0.1217, 29.1},   /* IEEE EI */
};

static int valid_curve(int32_t curve) { return curve >= 0 && curve <= PROT_CURVE_IEEE_EI; }

static int positive(double x) { return isfinite(x) && x > 0.0; }

static int non_negative(double x) { return isfinite(x) && x >= 0.0; }

double ProtCurve_operateTime(int32_t curve, double tms, double m)
{
    const CurveConstants* k;
    if (!valid_curve(curve) || !(m > 1.0)) {
        return -1.0;
    }
    k = &CURVES[curve];
    return tms * (k->k / (pow(m, k->alpha) - 1.0) + k->c);
}

ProtStatus ProtCore_create(int32_t relay_count, int32_t element_capacity, ProtCore* out)
{
    ProtCore self;
    if (out == NULL || relay_count < 0 || element_capacity < 0) {
        return PROT_ERR_ARGUMENT;
    }
    *out = NULL;
    self = (ProtCore)calloc(1, sizeof(struct sProtCore));
    if (self == NULL) {
        return PROT_ERR_NO_MEMORY;
    }
    self->relays = (Relay*)calloc((size_t)(relay_count > 0 ? relay_count : 1), sizeof(Relay));
    self->elements =
        (Element*)calloc((size_t)(element_capacity > 0 ? element_capacity : 1), sizeof(Element));
    if (self->relays == NULL || self->elements == NULL) {
        ProtCore_destroy(self);
        return PROT_ERR_NO_MEMORY;
    }
    self->relay_count = relay_count;
    self->element_capacity = element_capacity;
    *out = self;
    return PROT_OK;
}

void ProtCore_destroy(ProtCore self)
{
    if (self == NULL) {
        return;
    }
    free(self->relays);
    free(self->elements);
    free(self);
}

ProtStatus ProtCore_setRelay(ProtCore self, int32_t relay, const ProtRelaySettings* s)
{
    int i;
    Relay* r;
    if (self == NULL || s == NULL || relay < 0 || relay >= self->relay_count) {
        return PROT_ERR_ARGUMENT;
    }
    if (!positive(s->nominal_kv) || s->shots < 0 || s->shots > 4 || !non_negative(s->reclaim_s) ||
        !non_negative(s->high_current_lockout_a) || !non_negative(s->close_onto_fault_s) ||
        !non_negative(s->bf_current_a) || !non_negative(s->bf_retrip_s) ||
        !non_negative(s->bf_backup_s)) {
        return PROT_ERR_ARGUMENT;
    }
    for (i = 0; i < s->shots; i++) {
        if (!positive(s->dead_time_s[i])) {
            return PROT_ERR_ARGUMENT;
        }
    }
    r = &self->relays[relay];
    r->s = *s;
    memset(&r->st, 0, sizeof(r->st));
    r->st.state = PROT_AR_READY;
    r->configured = 1;
    return PROT_OK;
}

static int32_t slot_count(int32_t kind)
{
    switch (kind) {
    case PROT_ELEM_50P:
    case PROT_ELEM_51P:
    case PROT_ELEM_49:
        return 3;
    default:
        return 1;
    }
}

static int32_t slot_channel(int32_t kind, int32_t slot)
{
    switch (kind) {
    case PROT_ELEM_50P:
    case PROT_ELEM_51P:
    case PROT_ELEM_49:
        return slot;
    case PROT_ELEM_50N:
    case PROT_ELEM_51N:
        return PROT_CH_IN;
    case PROT_ELEM_27:
    case PROT_ELEM_59:
        return PROT_CH_VOLTAGE_KV;
    default:
        return PROT_CH_FREQUENCY_HZ;
    }
}

static int32_t slot_phase(int32_t kind, int32_t slot)
{
    switch (kind) {
    case PROT_ELEM_50P:
    case PROT_ELEM_51P:
    case PROT_ELEM_49:
        return slot;
    case PROT_ELEM_50N:
    case PROT_ELEM_51N:
        return PROT_PHASE_N;
    default:
        return PROT_PHASE_NONE;
    }
}

ProtStatus ProtCore_addElement(ProtCore self, const ProtElementSettings* s, int32_t* index_out)
{
    Element* e;
    int i;
    if (self == NULL || s == NULL || index_out == NULL || s->relay < 0 ||
        s->relay >= self->relay_count || s->kind < PROT_ELEM_50P || s->kind > PROT_ELEM_49) {
        return PROT_ERR_ARGUMENT;
    }
    if (self->element_count >= self->element_capacity) {
        return PROT_ERR_FULL;
    }
    if (!positive(s->pickup) || !positive(s->dropout_ratio) || !non_negative(s->delay_s)) {
        return PROT_ERR_ARGUMENT;
    }
    if (s->kind == PROT_ELEM_51P || s->kind == PROT_ELEM_51N) {
        if (!valid_curve(s->curve) || !valid_curve(s->fast_curve) || !positive(s->tms) ||
            !positive(s->fast_tms) || !(s->start_factor >= 1.0 && s->start_factor <= 1.2) ||
            !non_negative(s->min_time_s) || !(isfinite(s->m_max) && s->m_max > s->start_factor) ||
            s->reset_mode < PROT_RESET_INSTANT || s->reset_mode > PROT_RESET_DEPENDENT ||
            !non_negative(s->reset_delay_s)) {
            return PROT_ERR_ARGUMENT;
        }
        if (s->reset_mode == PROT_RESET_DEPENDENT &&
            (CURVES[s->curve].reset_tr <= 0.0 || CURVES[s->fast_curve].reset_tr <= 0.0)) {
            return PROT_ERR_ARGUMENT;
        }
    }
    if (s->kind == PROT_ELEM_49 &&
        (!positive(s->tau_s) || !positive(s->cooling_tau_s) || !positive(s->reset_theta) ||
         !(s->reset_theta < 1.0))) {
        return PROT_ERR_ARGUMENT;
    }
    if ((s->kind == PROT_ELEM_81U || s->kind == PROT_ELEM_81O) && !non_negative(s->block_below_pu)) {
        return PROT_ERR_ARGUMENT;
    }
    e = &self->elements[self->element_count];
    memset(e, 0, sizeof(*e));
    e->s = *s;
    for (i = 0; i < 3; i++) {
        e->st.since[i] = 0.0;
    }
    *index_out = self->element_count;
    self->element_count++;
    return PROT_OK;
}

typedef struct {
    ProtEvent* events;
    int32_t capacity;
    int32_t n;
} Sink;

static void emit(Sink* sink, double time, int32_t relay, int32_t element, int32_t kind,
                 int32_t phase, double value)
{
    if (sink->n < sink->capacity) {
        ProtEvent* ev = &sink->events[sink->n];
        ev->time = time;
        ev->relay = relay;
        ev->element = element;
        ev->kind = kind;
        ev->phase = phase;
        ev->value = value;
    }
    sink->n++;
}

static ProtStatus finish(Sink* sink, int32_t* count)
{
    if (sink->n > sink->capacity) {
        *count = sink->capacity;
        return PROT_ERR_FULL;
    }
    *count = sink->n;
    return PROT_OK;
}

/* The 79 selects the fast curve for the next trip of the sequence. */
static int relay_fast(const Relay* r)
{
    if (r->s.shots <= 0 || r->st.state == PROT_AR_LOCKOUT || r->st.state == PROT_AR_OPEN ||
        r->st.trips >= 32) {
        return 0;
    }
    return (int)((r->s.fast_mask >> (uint32_t)r->st.trips) & 1u);
}

/* Pickup and dropout of a slot, counted on its relay (the 79 reclaim time runs only while none
   of the relay's slots is picked up, and not on the step one drops out). */
static void slot_picks_up(Relay* r, ProtElementState* st, int32_t slot)
{
    st->picked[slot] = 1;
    r->picked_slots++;
}

static void slot_drops_out(Relay* r, ProtElementState* st, int32_t slot)
{
    st->picked[slot] = 0;
    r->picked_slots--;
    r->dropped = 1;
}

/* Definite-time pickup / dropout / operate of one slot: `operate` is the pickup condition,
   `release` the dropout condition (hysteresis between them). */
static void definite_slot(Sink* sink, Relay* r, Element* e, int32_t idx, int32_t slot,
                          int32_t phase, double now, double x, int operate, int release)
{
    ProtElementState* st = &e->st;
    if (!st->picked[slot] && operate) {
        slot_picks_up(r, st, slot);
        st->since[slot] = now;
        emit(sink, now, e->s.relay, idx, PROT_EV_PICKUP, phase, x);
    } else if (st->picked[slot] && release) {
        slot_drops_out(r, st, slot);
        st->operated[slot] = 0;
        emit(sink, now, e->s.relay, idx, PROT_EV_DROPOUT, phase, x);
    }
    if (st->picked[slot] && !st->operated[slot] && now - st->since[slot] >= e->s.delay_s) {
        st->operated[slot] = 1;
    }
}

static void inverse_slot(Sink* sink, Relay* r, Element* e, int32_t idx, int32_t slot,
                         int32_t phase, double now, double dt, double x, int fast)
{
    const ProtElementSettings* s = &e->s;
    ProtElementState* st = &e->st;
    int32_t curve = fast ? s->fast_curve : s->curve;
    double tms = fast ? s->fast_tms : s->tms;
    double m = x / s->pickup;
    if (!st->picked[slot] && m > s->start_factor) {
        slot_picks_up(r, st, slot);
        emit(sink, now, s->relay, idx, PROT_EV_PICKUP, phase, x);
    } else if (st->picked[slot] && m < s->dropout_ratio * s->start_factor) {
        slot_drops_out(r, st, slot);
        st->operated[slot] = 0;
        emit(sink, now, s->relay, idx, PROT_EV_DROPOUT, phase, x);
    }
    if (m > s->start_factor) {
        double mc = m < s->m_max ? m : s->m_max;
        double t = ProtCurve_operateTime(curve, tms, mc);
        if (t < s->min_time_s) {
            t = s->min_time_s;
        }
        t = t + s->delay_s;
        st->accumulator[slot] = st->accumulator[slot] + dt / t;
        st->since[slot] = now;
    } else if (m >= 1.0) {
        st->since[slot] = now;
    } else if (s->reset_mode == PROT_RESET_INSTANT) {
        st->accumulator[slot] = 0.0;
    } else if (s->reset_mode == PROT_RESET_DEFINITE) {
        if (now - st->since[slot] >= s->reset_delay_s) {
            st->accumulator[slot] = 0.0;
        }
    } else {
        double t_reset = tms * CURVES[curve].reset_tr / (1.0 - m * m);
        st->accumulator[slot] = st->accumulator[slot] - dt / t_reset;
        if (st->accumulator[slot] < 0.0) {
            st->accumulator[slot] = 0.0;
        }
    }
    if (st->accumulator[slot] >= 1.0) {
        st->accumulator[slot] = 1.0;
        if (st->picked[slot]) {
            st->operated[slot] = 1;
        }
    }
}

static void thermal_slot(Sink* sink, Relay* r, Element* e, int32_t idx, int32_t slot,
                         int32_t phase, double now, double dt, double x)
{
    const ProtElementSettings* s = &e->s;
    ProtElementState* st = &e->st;
    double ratio = x / s->pickup;
    double theta_inf = ratio * ratio;
    double theta = st->accumulator[slot];
    double tau = theta_inf >= theta ? s->tau_s : s->cooling_tau_s;
    if (!st->picked[slot] && x > s->pickup) {
        slot_picks_up(r, st, slot);
        emit(sink, now, s->relay, idx, PROT_EV_PICKUP, phase, x);
    } else if (st->picked[slot] && x < s->dropout_ratio * s->pickup) {
        slot_drops_out(r, st, slot);
        emit(sink, now, s->relay, idx, PROT_EV_DROPOUT, phase, x);
    }
    theta = theta_inf + (theta - theta_inf) * exp(-dt / tau);
    st->accumulator[slot] = theta;
    if (theta >= 1.0) {
        st->operated[slot] = 1;
    } else if (st->operated[slot] && theta < s->reset_theta) {
        st->operated[slot] = 0;
    }
}

static int sample_good(const double* samples, const uint8_t* quality, int32_t relay, int32_t ch)
{
    size_t i = (size_t)relay * PROT_CHANNELS + (size_t)ch;
    return quality[i] == 1 && isfinite(samples[i]);
}

static double sample(const double* samples, int32_t relay, int32_t ch)
{
    return samples[(size_t)relay * PROT_CHANNELS + (size_t)ch];
}

static void update_element(Sink* sink, ProtCore self, int32_t idx, double now, double dt,
                           const double* samples, const uint8_t* quality)
{
    Element* e = &self->elements[idx];
    const ProtElementSettings* s = &e->s;
    Relay* r = &self->relays[s->relay];
    int32_t n = slot_count(s->kind);
    int32_t slot;
    int fast = relay_fast(r);
    for (slot = 0; slot < n; slot++) {
        int32_t ch = slot_channel(s->kind, slot);
        int32_t phase = slot_phase(s->kind, slot);
        double x;
        double dt_slot;
        int good = sample_good(samples, quality, s->relay, ch);
        if (good && (s->kind == PROT_ELEM_81U || s->kind == PROT_ELEM_81O) &&
            s->block_below_pu > 0.0) {
            good = sample_good(samples, quality, s->relay, PROT_CH_VOLTAGE_KV);
        }
        e->good_now[slot] = good;
        if (!good) {
            e->was_good[slot] = 0;
            if (e->st.operated[slot]) {
                r->operated_count++;
            }
            continue;
        }
        dt_slot = e->was_good[slot] ? dt : 0.0;
        e->was_good[slot] = 1;
        x = sample(samples, s->relay, ch);
        switch (s->kind) {
        case PROT_ELEM_50P:
        case PROT_ELEM_50N: {
            int active = !s->fast_only || fast;
            definite_slot(sink, r, e, idx, slot, phase, now, x, active && x > s->pickup,
                          !active || x < s->pickup * s->dropout_ratio);
            break;
        }
        case PROT_ELEM_51P:
        case PROT_ELEM_51N:
            inverse_slot(sink, r, e, idx, slot, phase, now, dt_slot, x, fast);
            break;
        case PROT_ELEM_27: {
            /* Supervised by the breaker position: a dead line behind an open breaker is no
               undervoltage (and must not trip the breaker the moment it closes). */
            double pu = x / r->s.nominal_kv;
            int open = sample_good(samples, quality, s->relay, PROT_CH_CLOSED) &&
                       sample(samples, s->relay, PROT_CH_CLOSED) < 0.5;
            definite_slot(sink, r, e, idx, slot, phase, now, x, !open && pu < s->pickup,
                          open || pu > s->pickup * s->dropout_ratio);
            break;
        }
        case PROT_ELEM_59: {
            double pu = x / r->s.nominal_kv;
            definite_slot(sink, r, e, idx, slot, phase, now, x, pu > s->pickup,
                          pu < s->pickup * s->dropout_ratio);
            break;
        }
        case PROT_ELEM_81U:
        case PROT_ELEM_81O: {
            int blocked = s->block_below_pu > 0.0 &&
                          sample(samples, s->relay, PROT_CH_VOLTAGE_KV) / r->s.nominal_kv <
                              s->block_below_pu;
            int operate;
            int release;
            if (s->kind == PROT_ELEM_81U) {
                operate = !blocked && x < s->pickup;
                release = blocked || x > s->pickup + s->dropout_ratio;
            } else {
                operate = !blocked && x > s->pickup;
                release = blocked || x < s->pickup - s->dropout_ratio;
            }
            definite_slot(sink, r, e, idx, slot, phase, now, x, operate, release);
            break;
        }
        default:
            thermal_slot(sink, r, e, idx, slot, phase, now, dt_slot, x);
            break;
        }
        if (e->st.operated[slot]) {
            r->operated_count++;
            r->operating_good++;
        }
    }
}

/* Largest good phase current of a relay; *any_good tells whether there was one. */
static double max_phase_current(const double* samples, const uint8_t* quality, int32_t relay,
                                int* any_good)
{
    double m = 0.0;
    int32_t ch;
    *any_good = 0;
    for (ch = PROT_CH_IA; ch <= PROT_CH_IC; ch++) {
        if (sample_good(samples, quality, relay, ch)) {
            double x = sample(samples, relay, ch);
            if (!*any_good || x > m) {
                m = x;
            }
            *any_good = 1;
        }
    }
    return m;
}

static void lock_out(Sink* sink, Relay* r, int32_t relay, double now, double value)
{
    if (r->st.state != PROT_AR_LOCKOUT) {
        r->st.state = PROT_AR_LOCKOUT;
        emit(sink, now, relay, -1, PROT_EV_LOCKOUT, PROT_PHASE_NONE, value);
    }
}

static void trip_relay(Sink* sink, ProtCore self, int32_t relay, double now,
                       const double* samples, double i_max)
{
    Relay* r = &self->relays[relay];
    int32_t idx;
    int reclose_allowed = 1;
    int lock;
    r->st.latched = 1;
    for (idx = 0; idx < self->element_count; idx++) {
        Element* e = &self->elements[idx];
        int32_t slot;
        int32_t n;
        if (e->s.relay != relay) {
            continue;
        }
        n = slot_count(e->s.kind);
        for (slot = 0; slot < n; slot++) {
            if (e->st.operated[slot] && e->good_now[slot]) {
                emit(sink, now, relay, idx, PROT_EV_TRIP, slot_phase(e->s.kind, slot),
                     sample(samples, relay, slot_channel(e->s.kind, slot)));
                if (!e->s.reclose) {
                    reclose_allowed = 0;
                }
            }
        }
    }
    if (r->s.bf_enabled) {
        r->st.bf_armed = 1;
        r->st.bf_start = now;
        r->st.bf_retrip_done = 0;
    }
    if (r->st.trips < 1000) {
        r->st.trips++;
    }
    lock = r->s.shots == 0 || !reclose_allowed || r->st.trips > r->s.shots ||
           (r->s.high_current_lockout_a > 0.0 && i_max >= r->s.high_current_lockout_a) ||
           now < r->st.close_onto_fault_until || r->st.state == PROT_AR_LOCKOUT ||
           r->st.state == PROT_AR_OPEN;
    if (lock) {
        lock_out(sink, r, relay, now, i_max);
    } else {
        r->st.state = PROT_AR_DEAD_TIME;
        r->st.deadline = now + r->s.dead_time_s[r->st.trips - 1];
    }
}

static void update_relay(Sink* sink, ProtCore self, int32_t relay, double now,
                         const double* samples, const uint8_t* quality)
{
    Relay* r = &self->relays[relay];
    int any_good;
    double i_max = max_phase_current(samples, quality, relay, &any_good);
    int known_open = sample_good(samples, quality, relay, PROT_CH_CLOSED) &&
                     sample(samples, relay, PROT_CH_CLOSED) < 0.5;
    if (r->st.latched && r->operated_count == 0) {
        r->st.latched = 0;
    }
    if (r->operating_good > 0 && !r->st.latched && !known_open) {
        trip_relay(sink, self, relay, now, samples, i_max);
    }
    if (r->st.bf_armed && any_good) {
        if (!(i_max > r->s.bf_current_a)) {
            r->st.bf_armed = 0;
        } else {
            if (!r->st.bf_retrip_done && now - r->st.bf_start >= r->s.bf_retrip_s) {
                r->st.bf_retrip_done = 1;
                emit(sink, now, relay, -1, PROT_EV_RETRIP, PROT_PHASE_NONE, i_max);
            }
            if (now - r->st.bf_start >= r->s.bf_backup_s) {
                r->st.bf_armed = 0;
                emit(sink, now, relay, -1, PROT_EV_BACKUP_TRIP, PROT_PHASE_NONE, i_max);
                lock_out(sink, r, relay, now, i_max);
            }
        }
    }
    if (r->st.state == PROT_AR_DEAD_TIME && now >= r->st.deadline && !r->st.bf_armed) {
        r->st.state = PROT_AR_RECLAIM;
        r->st.deadline = now + r->s.reclaim_s;
        r->st.latched = 0;
        emit(sink, now, relay, -1, PROT_EV_RECLOSE, PROT_PHASE_NONE, i_max);
    } else if (r->st.state == PROT_AR_RECLAIM && (r->picked_slots > 0 || r->dropped)) {
        /* A fault is present: the reclaim time restarts in full and runs only from the step
           on which the last element of the relay dropped out, so a trip on a fault that
           persists through the reclaim time counts as the next shot of the same sequence. */
        r->st.deadline = now + r->s.reclaim_s;
    } else if (r->st.state == PROT_AR_RECLAIM && now >= r->st.deadline) {
        r->st.state = PROT_AR_READY;
        r->st.trips = 0;
        emit(sink, now, relay, -1, PROT_EV_RESET, PROT_PHASE_NONE, i_max);
    }
}

ProtStatus ProtCore_step(ProtCore self, double now, const double* samples,
                         const uint8_t* quality, ProtEvent* events, int32_t capacity,
                         int32_t* count)
{
    Sink sink;
    double dt;
    int32_t i;
    if (self == NULL || samples == NULL || quality == NULL || count == NULL ||
        (events == NULL && capacity > 0) || capacity < 0 || !isfinite(now)) {
        return PROT_ERR_ARGUMENT;
    }
    for (i = 0; i < self->relay_count; i++) {
        if (!self->relays[i].configured) {
            return PROT_ERR_STATE;
        }
    }
    if (!self->started) {
        self->started = 1;
        self->last_now = now;
    }
    if (now < self->last_now) {
        now = self->last_now;
    }
    dt = now - self->last_now;
    self->last_now = now;
    sink.events = events;
    sink.capacity = capacity;
    sink.n = 0;
    for (i = 0; i < self->relay_count; i++) {
        self->relays[i].operated_count = 0;
        self->relays[i].operating_good = 0;
        self->relays[i].dropped = 0;
    }
    for (i = 0; i < self->element_count; i++) {
        update_element(&sink, self, i, now, dt, samples, quality);
    }
    for (i = 0; i < self->relay_count; i++) {
        update_relay(&sink, self, i, now, samples, quality);
    }
    return finish(&sink, count);
}

static ProtStatus relay_args(ProtCore self, int32_t relay, ProtEvent* events, int32_t capacity,
                             int32_t* count, double now)
{
    if (self == NULL || relay < 0 || relay >= self->relay_count || count == NULL ||
        (events == NULL && capacity > 0) || capacity < 0 || !isfinite(now)) {
        return PROT_ERR_ARGUMENT;
    }
    if (!self->relays[relay].configured) {
        return PROT_ERR_STATE;
    }
    return PROT_OK;
}

ProtStatus ProtCore_manualTrip(ProtCore self, int32_t relay, double now, ProtEvent* events,
                               int32_t capacity, int32_t* count)
{
    Sink sink;
    Relay* r;
    ProtStatus rc = relay_args(self, relay, events, capacity, count, now);
    if (rc != PROT_OK) {
        return rc;
    }
    r = &self->relays[relay];
    sink.events = events;
    sink.capacity = capacity;
    sink.n = 0;
    if (r->st.state != PROT_AR_LOCKOUT) {
        r->st.state = PROT_AR_OPEN;
    }
    r->st.trips = 0;
    emit(&sink, now, relay, -1, PROT_EV_OPEN, PROT_PHASE_NONE, 0.0);
    return finish(&sink, count);
}

ProtStatus ProtCore_manualClose(ProtCore self, int32_t relay, double now, int32_t authorised,
                                ProtEvent* events, int32_t capacity, int32_t* count)
{
    Sink sink;
    Relay* r;
    ProtStatus rc = relay_args(self, relay, events, capacity, count, now);
    if (rc != PROT_OK) {
        return rc;
    }
    r = &self->relays[relay];
    if (r->st.state == PROT_AR_LOCKOUT && !authorised) {
        *count = 0;
        return PROT_ERR_STATE;
    }
    sink.events = events;
    sink.capacity = capacity;
    sink.n = 0;
    if (r->st.state == PROT_AR_LOCKOUT) {
        emit(&sink, now, relay, -1, PROT_EV_RESET, PROT_PHASE_NONE, 0.0);
    }
    r->st.state = PROT_AR_READY;
    r->st.trips = 0;
    r->st.latched = 0;
    r->st.bf_armed = 0;
    r->st.close_onto_fault_until = now + r->s.close_onto_fault_s;
    emit(&sink, now, relay, -1, PROT_EV_CLOSE, PROT_PHASE_NONE, 0.0);
    return finish(&sink, count);
}

ProtStatus ProtCore_getRelayState(ProtCore self, int32_t relay, ProtRelayState* out)
{
    if (self == NULL || out == NULL || relay < 0 || relay >= self->relay_count) {
        return PROT_ERR_ARGUMENT;
    }
    *out = self->relays[relay].st;
    return PROT_OK;
}

ProtStatus ProtCore_setRelayState(ProtCore self, int32_t relay, const ProtRelayState* state)
{
    if (self == NULL || state == NULL || relay < 0 || relay >= self->relay_count ||
        state->state < PROT_AR_READY || state->state > PROT_AR_OPEN || state->trips < 0) {
        return PROT_ERR_ARGUMENT;
    }
    self->relays[relay].st = *state;
    return PROT_OK;
}

ProtStatus ProtCore_getElementState(ProtCore self, int32_t element, ProtElementState* out)
{
    if (self == NULL || out == NULL || element < 0 || element >= self->element_count) {
        return PROT_ERR_ARGUMENT;
    }
    *out = self->elements[element].st;
    return PROT_OK;
}

ProtStatus ProtCore_setElementState(ProtCore self, int32_t element, const ProtElementState* state)
{
    int32_t i;
    Element* e;
    Relay* r;
    if (self == NULL || state == NULL || element < 0 || element >= self->element_count) {
        return PROT_ERR_ARGUMENT;
    }
    for (i = 0; i < 3; i++) {
        if (!non_negative(state->accumulator[i])) {
            return PROT_ERR_ARGUMENT;
        }
    }
    e = &self->elements[element];
    r = &self->relays[e->s.relay];
    for (i = 0; i < slot_count(e->s.kind); i++) {
        if (e->st.picked[i]) {
            r->picked_slots--;
        }
        if (state->picked[i]) {
            r->picked_slots++;
        }
    }
    self->elements[element].st = *state;
    for (i = 0; i < 3; i++) {
        self->elements[element].was_good[i] = 0;
    }
    return PROT_OK;
}
