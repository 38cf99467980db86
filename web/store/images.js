// Product pictures drawn from the catalog: an SVG per item, its category's
// silhouette in the item's colour on a soft backdrop, with a small pattern
// picked by the item's `shape` so no two neighbours look alike. No image
// files to ship.

const ICONS = {
  shoes: (c, d) => `
    <path d="M38 122 C40 100 52 86 62 80 L74 92 C86 98 104 100 126 104 C146 108 160 114 162 126 L162 134 L38 134 Z" fill="${c}"/>
    <path d="M38 134 L162 134 L162 142 L40 142 Z" fill="${d}"/>
    <path d="M70 96 L80 90 M78 100 L88 94 M86 103 L96 97" stroke="#fff" stroke-width="3" stroke-linecap="round" opacity=".85"/>`,
  jackets: (c, d) => `
    <path d="M72 46 L88 40 Q100 52 112 40 L128 46 L156 70 L146 96 L134 88 L134 150 L66 150 L66 88 L54 96 L44 70 Z" fill="${c}"/>
    <path d="M100 52 L100 150" stroke="${d}" stroke-width="4"/>
    <path d="M88 40 Q100 60 112 40" fill="none" stroke="${d}" stroke-width="4"/>
    <rect x="74" y="108" width="16" height="4" rx="2" fill="${d}"/><rect x="110" y="108" width="16" height="4" rx="2" fill="${d}"/>`,
  bags: (c, d) => `
    <path d="M78 62 Q78 40 100 40 Q122 40 122 62" fill="none" stroke="${d}" stroke-width="7"/>
    <rect x="58" y="60" width="84" height="92" rx="16" fill="${c}"/>
    <rect x="70" y="104" width="60" height="34" rx="8" fill="${d}" opacity=".55"/>
    <rect x="92" y="100" width="16" height="8" rx="3" fill="#fff" opacity=".8"/>`,
  watches: (c, d) => `
    <rect x="84" y="30" width="32" height="40" rx="6" fill="${d}"/><rect x="84" y="130" width="32" height="40" rx="6" fill="${d}"/>
    <circle cx="100" cy="100" r="40" fill="${c}"/><circle cx="100" cy="100" r="31" fill="#fbfaf7"/>
    <path d="M100 100 L100 78 M100 100 L116 108" stroke="#222" stroke-width="4" stroke-linecap="round"/>
    <circle cx="100" cy="100" r="3" fill="#222"/><rect x="140" y="96" width="7" height="8" rx="2" fill="${d}"/>`,
  audio: (c, d) => `
    <path d="M56 110 L56 96 Q56 52 100 52 Q144 52 144 96 L144 110" fill="none" stroke="${d}" stroke-width="9" stroke-linecap="round"/>
    <rect x="44" y="100" width="30" height="48" rx="12" fill="${c}"/><rect x="126" y="100" width="30" height="48" rx="12" fill="${c}"/>
    <rect x="52" y="110" width="14" height="28" rx="6" fill="${d}" opacity=".45"/><rect x="134" y="110" width="14" height="28" rx="6" fill="${d}" opacity=".45"/>`,
  home: (c, d) => `
    <path d="M70 48 L130 48 L148 100 L52 100 Z" fill="${c}"/>
    <rect x="96" y="100" width="8" height="44" fill="${d}"/>
    <ellipse cx="100" cy="150" rx="30" ry="8" fill="${d}"/>
    <path d="M64 100 L136 100" stroke="${d}" stroke-width="3" opacity=".5"/>`,
  kitchen: (c, d) => `
    <path d="M60 62 L128 62 L122 146 Q120 152 114 152 L74 152 Q68 152 66 146 Z" fill="${c}"/>
    <path d="M126 80 Q152 80 150 104 Q148 126 122 124" fill="none" stroke="${c}" stroke-width="10"/>
    <path d="M76 46 Q72 38 78 30 M94 46 Q90 38 96 30 M112 46 Q108 38 114 30" fill="none" stroke="${d}" stroke-width="3" stroke-linecap="round" opacity=".6"/>
    <rect x="64" y="84" width="60" height="6" fill="#fff" opacity=".35"/>`,
  fitness: (c, d) => `
    <rect x="40" y="70" width="20" height="60" rx="5" fill="${c}"/><rect x="140" y="70" width="20" height="60" rx="5" fill="${c}"/>
    <rect x="28" y="82" width="14" height="36" rx="4" fill="${d}"/><rect x="158" y="82" width="14" height="36" rx="4" fill="${d}"/>
    <rect x="60" y="94" width="80" height="12" rx="4" fill="${d}"/>`,
};

function pattern(shape, bg2) {
  switch (shape % 4) {
    case 0:
      return `<circle cx="168" cy="36" r="22" fill="${bg2}"/>`;
    case 1:
      return `<rect x="0" y="160" width="200" height="40" fill="${bg2}"/>`;
    case 2:
      return `<path d="M0 200 L0 150 L60 200 Z M200 0 L150 0 L200 50 Z" fill="${bg2}"/>`;
    default:
      return `<circle cx="30" cy="170" r="40" fill="${bg2}"/>`;
  }
}

/** An SVG picture of `item` (a catalog line) as markup. */
export function productSvg(item, label = "") {
  const h = Number(item.hue) || 0;
  const s = Number(item.sat) || 30;
  const l = Number(item.light) || 50;
  const color = `hsl(${h} ${s}% ${l}%)`;
  const dark = `hsl(${h} ${Math.min(100, s + 10)}% ${Math.max(12, l - 18)}%)`;
  const bg = `hsl(${(h + 25) % 360} 35% 95%)`;
  const bg2 = `hsl(${(h + 25) % 360} 40% 89%)`;
  const icon = (ICONS[item.category] || ICONS.home)(color, dark);
  return `<svg viewBox="0 0 200 200" xmlns="http://www.w3.org/2000/svg" role="img" aria-label="${label}">
    <rect width="200" height="200" fill="${bg}"/>${pattern(Number(item.shape) || 0, bg2)}
    <ellipse cx="100" cy="170" rx="62" ry="7" fill="#000" opacity=".06"/>${icon}</svg>`;
}

/** The shop's logo mark. */
export const LOGO = `<svg viewBox="0 0 32 32" aria-hidden="true"><rect width="32" height="32" rx="8" fill="#1f3d36"/><path d="M9 22 L9 10 L16 18 L23 10 L23 22" fill="none" stroke="#f4c95d" stroke-width="3" stroke-linejoin="round" stroke-linecap="round"/></svg>`;
