fn main() {
    println!("axbench");
}
