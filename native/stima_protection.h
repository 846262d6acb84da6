/*
 * stima_protection.h - the protection-logic core of one substation (C99).
 *
 * One ProtCore holds every protection element of the substation, grouped by relay (one relay
 * per circuit breaker). ProtCore_step advances every element by one time step from the latest
 * samples and reports what happened as events.
 *
 * Rules of this API
 *  - Every function returns a ProtStatus (PROT_OK = 0, errors < 0), except ProtCore_destroy
 *    and ProtCurve_operateTime.
 *  - Time is always an argument: seconds of a monotonic clock. A time earlier than the last
 *    one seen is treated as the last one (no step backwards).
 *  - Memory: ProtCore_create is the only function that allocates; ProtCore_destroy frees it.
 *    The caller owns every buffer it passes (samples, quality flags, event output); the core
 *    never keeps a pointer to them after the call returns.
 *  - Samples: PROT_CHANNELS doubles per relay (currents in A, voltage in kV, frequency in Hz,
 *    breaker position 1/0), each with a quality flag (1 = good). An element whose input is not
 *    good holds its state: it neither times nor trips on that sample.
 *  - 27 is supervised by the breaker position (blocked while PROT_CH_CLOSED is good and 0);
 *    81U/81O are blocked while the voltage is below block_below_pu.
 *  - A relay trips (PROT_EV_TRIP per operated element and phase) when an element operates on a
 *    good sample, no earlier trip is still latched and the breaker is not known open; the trip
 *    starts 50BF and the 79 sequence. Every trip of a sequence counts one shot.
 *  - Reclaim: after a reclosure the sequence resets (shot counter 0) only once the reclaim time
 *    has run without a break while no element of the relay is picked up: every step on which an
 *    element is picked up or drops out restarts it in full. A fault still present when the
 *    reclaim time would have run out thus trips as the next shot (and locks out after the
 *    last), never as the first trip of a new sequence. The close-onto-fault window after a
 *    manual close is a fixed time from the close.
 *  - Not thread-safe: one thread per ProtCore.
 *
 * The block between CDEF-BEGIN and CDEF-END is read by the cffi build script: no preprocessor
 * directives inside it.
 */
#ifndef STIMA_PROTECTION_H
#define STIMA_PROTECTION_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* CDEF-BEGIN */

/* Opaque handle: the struct is defined only in stima_protection.c. */
typedef struct sProtCore* ProtCore;

typedef enum {
    PROT_OK = 0,
    PROT_ERR_ARGUMENT = -1,   /* null pointer, index out of range, setting out of range */
    PROT_ERR_NO_MEMORY = -2,  /* ProtCore_create could not allocate */
    PROT_ERR_FULL = -3,       /* element capacity reached, or event buffer too small */
    PROT_ERR_STATE = -4       /* operation refused in the present state */
} ProtStatus;

/* Input channels of a relay, in this order. */
typedef enum {
    PROT_CH_IA = 0, PROT_CH_IB = 1, PROT_CH_IC = 2, PROT_CH_IN = 3,
    PROT_CH_VOLTAGE_KV = 4, PROT_CH_FREQUENCY_HZ = 5, PROT_CH_CLOSED = 6, PROT_CH_SPARE = 7,
    PROT_CHANNELS = 8
} ProtChannel;

typedef enum {
    PROT_ELEM_50P = 0, PROT_ELEM_50N = 1, PROT_ELEM_51P = 2, PROT_ELEM_51N = 3,
    PROT_ELEM_27 = 4, PROT_ELEM_59 = 5, PROT_ELEM_81U = 6, PROT_ELEM_81O = 7, PROT_ELEM_49 = 8
} ProtElementKind;

typedef enum {
    PROT_CURVE_IEC_SI = 0, PROT_CURVE_IEC_VI = 1, PROT_CURVE_IEC_EI = 2, PROT_CURVE_IEC_LTI = 3,
    PROT_CURVE_IEEE_MI = 4, PROT_CURVE_IEEE_VI = 5, PROT_CURVE_IEEE_EI = 6
} ProtCurve;

typedef enum {
    PROT_RESET_INSTANT = 0,    /* accumulator cleared as soon as M < 1 */
    PROT_RESET_DEFINITE = 1,   /* held for reset_delay_s below M = 1, then cleared */
    PROT_RESET_DEPENDENT = 2   /* IEEE C37.112 disk emulation: dE/dt = -1/t_reset(M) */
} ProtResetMode;

typedef enum {
    PROT_PHASE_A = 0, PROT_PHASE_B = 1, PROT_PHASE_C = 2, PROT_PHASE_N = 3, PROT_PHASE_NONE = 4
} ProtPhase;

typedef enum {
    PROT_EV_PICKUP = 1, PROT_EV_DROPOUT = 2, PROT_EV_TRIP = 3, PROT_EV_RECLOSE = 4,
    PROT_EV_LOCKOUT = 5, PROT_EV_RESET = 6, PROT_EV_RETRIP = 7, PROT_EV_BACKUP_TRIP = 8,
    PROT_EV_CLOSE = 9, PROT_EV_OPEN = 10
} ProtEventKind;

/* Auto-reclose (79) states. */
typedef enum {
    PROT_AR_READY = 0,      /* closed, shot counter 0 */
    PROT_AR_DEAD_TIME = 1,  /* tripped, waiting to reclose */
    PROT_AR_RECLAIM = 2,    /* reclosed, waiting for the reclaim time to expire (it runs only
                               while no element of the relay is picked up) */
    PROT_AR_LOCKOUT = 3,    /* 86 latched: only an authorised close re-arms */
    PROT_AR_OPEN = 4        /* opened by hand: no reclose, an ordinary close re-arms */
} ProtRecloseState;

typedef struct {
    double time;        /* monotonic s */
    int32_t relay;
    int32_t element;    /* index returned by ProtCore_addElement, -1 for relay-level events */
    int32_t kind;       /* ProtEventKind */
    int32_t phase;      /* ProtPhase */
    double value;       /* measured value: A, kV, Hz; max phase current for relay events */
} ProtEvent;

typedef struct {
    double nominal_kv;              /* voltage base of 27/59, > 0 */
    int32_t shots;                  /* reclosures 0..4; 0 = every trip locks out */
    double dead_time_s[4];          /* dead time before reclosure n+1 */
    uint32_t fast_mask;             /* bit n set: trip n+1 of a sequence on the fast curve */
    double reclaim_s;               /* reclaim (reset) time after a reclosure, timed without a
                                       break while no element of the relay is picked up */
    double high_current_lockout_a;  /* trip above this current locks out at once; 0 = off */
    double close_onto_fault_s;      /* a trip this soon after a manual close locks out */
    int32_t bf_enabled;             /* 50BF */
    double bf_current_a;            /* current detector pickup */
    double bf_retrip_s;             /* re-trip timer from trip */
    double bf_backup_s;             /* back-up trip timer from trip */
} ProtRelaySettings;

typedef struct {
    int32_t relay;
    int32_t kind;            /* ProtElementKind */
    int32_t reclose;         /* 1: a trip by this element may be reclosed by the 79 */
    int32_t fast_only;       /* 50P/50N: only active while the 79 selects the fast curve */
    double pickup;           /* A (50/51), pu (27/59), Hz (81), k*I_B in A (49) */
    double dropout_ratio;    /* of pickup; 81 uses dropout_ratio as Hz of hysteresis */
    double delay_s;          /* definite delay (50, 27, 59, 81); added delay (51) */
    int32_t curve;           /* 51: ProtCurve on delayed trips */
    int32_t fast_curve;      /* 51: ProtCurve on fast trips */
    double tms;              /* 51: TMS / time dial on delayed trips */
    double fast_tms;         /* 51: TMS / time dial on fast trips */
    double start_factor;     /* 51: start at M > start_factor (1.0..1.1) */
    double min_time_s;       /* 51: minimum operate time */
    double m_max;            /* 51: M clamp (definite time beyond) */
    int32_t reset_mode;      /* 51: ProtResetMode */
    double reset_delay_s;    /* 51: definite reset delay */
    double tau_s;            /* 49: heating time constant */
    double cooling_tau_s;    /* 49: cooling time constant */
    double reset_theta;      /* 49: operated state clears below this thermal level */
    double block_below_pu;   /* 81: blocked while voltage below this (0 = never) */
} ProtElementSettings;

typedef struct {
    int32_t state;             /* ProtRecloseState */
    int32_t trips;             /* trips in the present sequence */
    double deadline;           /* dead time / reclaim expiry, monotonic s (the reclaim expiry
                                  is now + reclaim_s on every step an element of the relay is
                                  picked up or drops out) */
    double close_onto_fault_until;
    int32_t latched;           /* a trip was issued and its cause has not dropped out */
    int32_t bf_armed;
    double bf_start;
    int32_t bf_retrip_done;
} ProtRelayState;

typedef struct {
    double accumulator[3];     /* 51: E; 49: theta; per phase slot */
    double since[3];           /* start of the running timer per phase, monotonic s */
    int32_t picked[3];
    int32_t operated[3];
} ProtElementState;

/* Allocates a core for relay_count relays and up to element_capacity elements.
   On success *out owns the memory: release it with ProtCore_destroy. */
ProtStatus ProtCore_create(int32_t relay_count, int32_t element_capacity, ProtCore* out);

/* Frees everything the core owns. NULL is accepted. */
void ProtCore_destroy(ProtCore self);

/* Copies (does not keep) the settings of relay `relay`; validates them. */
ProtStatus ProtCore_setRelay(ProtCore self, int32_t relay, const ProtRelaySettings* settings);

/* Copies and validates an element's settings; *index_out receives its index. */
ProtStatus ProtCore_addElement(ProtCore self, const ProtElementSettings* settings,
                               int32_t* index_out);

/* Advances every element and relay to time `now` from the samples (relay_count * PROT_CHANNELS
   values and as many quality flags). Writes at most `capacity` events into `events` and the
   number written into *count; PROT_ERR_FULL if more were produced than fit (the first
   `capacity` are written and the state has advanced all the same). No allocation.
   Event order: element events (pickup, dropout) in element order, then relay events
   (trip, lockout, retrip, backup trip, reclose, reset) in relay order. */
ProtStatus ProtCore_step(ProtCore self, double now, const double* samples,
                         const uint8_t* quality, ProtEvent* events, int32_t capacity,
                         int32_t* count);

/* Operator open: emits PROT_EV_OPEN, blocks reclosing (state OPEN; LOCKOUT stays LOCKOUT). */
ProtStatus ProtCore_manualTrip(ProtCore self, int32_t relay, double now, ProtEvent* events,
                               int32_t capacity, int32_t* count);

/* Operator close: emits PROT_EV_CLOSE (and PROT_EV_RESET when it re-arms a lockout); starts the
   close-onto-fault window. PROT_ERR_STATE when locked out and not authorised. */
ProtStatus ProtCore_manualClose(ProtCore self, int32_t relay, double now, int32_t authorised,
                                ProtEvent* events, int32_t capacity, int32_t* count);

/* Copies the relay's reclose state out / in (snapshot and restore). */
ProtStatus ProtCore_getRelayState(ProtCore self, int32_t relay, ProtRelayState* out);
ProtStatus ProtCore_setRelayState(ProtCore self, int32_t relay, const ProtRelayState* state);

/* Copies an element's state out / in. */
ProtStatus ProtCore_getElementState(ProtCore self, int32_t element, ProtElementState* out);
ProtStatus ProtCore_setElementState(ProtCore self, int32_t element, const ProtElementState* state);

/* Operate time (s) of a curve at multiple m (> 1) and multiplier tms; -1 if m <= 1 or the
   curve is unknown. Pure function. */
double ProtCurve_operateTime(int32_t curve, double tms, double m);

/* CDEF-END */

#ifdef __cplusplus
}
#endif

#endif /* STIMA_PROTECTION_H */
